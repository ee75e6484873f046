"""Retriever training: the InfoNCE task end to end (8 simulated devices), resume, SentenceTransformer export."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qgjax.config import build_config
from qgjax.data import demo_dir
from qgjax.errors import ConfigError
from qgjax.models.bert import BiEncoder, EncoderConfig, init_params
from qgjax.train.infonce import Towers, infonce_loss, retriever_loss_fn
from qgjax.train.retriever_model import CPU_ENCODE_TOKENS, encode_chunking, rows_per_chunk


def _tuples(path):
  recs = [json.loads(line) for line in open(demo_dir() / "sample_queries.jsonl")]
  docs = sorted({r["doc_id"] for r in recs})
  with open(path, "w") as f:
    for i, r in enumerate(recs):
      negs = [docs[(docs.index(r["doc_id"]) + j) % len(docs)] for j in (1, 2)]
      f.write(json.dumps({"doc_id": r["doc_id"], "sample_idx": r["sample_idx"], "query": r["query"],
                          "pos_id": r["doc_id"], "neg_ids": negs}) + "\n")
    f.write(json.dumps({"doc_id": "x", "sample_idx": 0, "query": "q", "skip": "too_few_negatives"}) + "\n")
  return str(path)


@pytest.mark.slow
@pytest.mark.real_weights
def test_train_resume_export_loads_in_sentence_transformers(tmp_path):
  from sentence_transformers import SentenceTransformer

  from qgjax.jobs import train
  from qgjax.models.bert import encode_texts, load_bi_encoder

  assert len(jax.devices()) == 8
  over = [("workdir", str(tmp_path / "r")), ("data.train", _tuples(tmp_path / "t.jsonl")), ("num_steps", "2"),
          ("checkpoint.every", "1"), ("optim.lr", "1e-4")]
  cfg = build_config("configs/retriever.py:tiny", over)
  out = train.run(cfg)
  assert out["mesh"]["data"] == 8 and out["train_examples"] == 40 and out["checkpoints"] == [1, 2]
  assert (out["dtype"], out["attention"]) == ("float32", "xla")   # "auto" on a CPU host
  again = train.run(build_config("configs/retriever.py:tiny", over))
  assert again["resumed_from"] == 2
  export = out["export"]
  texts = ["what happens at the event horizon of a black hole", "transit methods for finding exoplanets",
           "a much longer sentence " * 20]
  st = SentenceTransformer(export, device="cpu").encode(texts, convert_to_numpy=True)
  module, params, tok, info = load_bi_encoder(export)
  ours = encode_texts(module, params, tok, texts, batch_size=4, max_len=info["max_seq_length"])
  np.testing.assert_allclose(ours, st, atol=2e-5)
  base = SentenceTransformer(load_bi_encoder("all-minilm-l6-v2")[3]["path"], device="cpu").encode(texts)
  assert np.abs(base - st).max() > 1e-4        # training moved the weights
  with pytest.raises(ConfigError, match="accum_steps"):
    train.run(build_config("configs/retriever.py:tiny", over + [("accum_steps", "2")]))


def test_separate_towers_loss_and_gradients():
  cfg = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                      max_position_embeddings=16)
  module = BiEncoder(cfg, pooling="mean", normalize=True)
  p = init_params(module, 0)
  params = {"query": p, "doc": init_params(module, 1)}
  rng = np.random.default_rng(0)
  b, h, length = 4, 2, 6
  batch = {"query": rng.integers(1, 50, (b, length)), "pos": rng.integers(1, 50, (b, length)),
           "pos_key": np.arange(b, dtype=np.float32), "weight": np.ones(b, np.float32)}
  for i in range(h):
    batch[f"neg{i}"] = rng.integers(1, 50, (b, length))
    batch[f"neg{i}_key"] = 10.0 + i * b + np.arange(b, dtype=np.float32)
  for name in ["query", "pos"] + [f"neg{i}" for i in range(h)]:
    batch[name + "_mask"] = np.ones((b, length), bool)
  batch = jax.tree.map(jnp.asarray, batch)
  loss_fn = retriever_loss_fn(Towers(module, shared=False), h, 0.05)
  (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, {}, batch)
  # the same number from the embeddings computed by hand
  enc = jax.jit(lambda pp, t: module.apply({"params": pp}, t, jnp.ones(t.shape, bool)))
  q = enc(params["query"], batch["query"])
  d = enc(params["doc"], batch["pos"])
  n = jnp.stack([enc(params["doc"], batch[f"neg{i}"]) for i in range(h)], axis=1)
  ref, _ = infonce_loss(q, d, n, temperature=0.05, pos_key=batch["pos_key"],
                        neg_key=jnp.stack([batch[f"neg{i}_key"] for i in range(h)], axis=1))
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
  norm = lambda t: float(sum(jnp.sum(x * x) for x in jax.tree.leaves(t)))
  assert norm(grads["query"]) > 0 and norm(grads["doc"]) > 0
  # shared towers: the doc tower's parameters are the query tower's
  shared_loss, _ = jax.jit(retriever_loss_fn(Towers(module, shared=True), h, 0.05))({"query": p}, {}, batch)
  ref_shared, _ = jax.jit(loss_fn)({"query": p, "doc": p}, {}, batch)
  np.testing.assert_allclose(float(shared_loss), float(ref_shared), rtol=1e-6)


@pytest.mark.parametrize("similarity, normalised", [("cos", True), ("dot", False)])
def test_similarity_cos_trains_and_exports_a_normalising_encoder(tmp_path, similarity, normalised):
  """MNRL scores with cos_sim: with similarity=cos a model without a Normalize module is trained on
  unit vectors and exported with one, so what is served is what was trained."""
  from transformers import AutoTokenizer

  from qgjax.models import bert
  from qgjax.train.infonce import setup_retriever

  tok = AutoTokenizer.from_pretrained(bert.resolve_model_dir("all-minilm-l6-v2"))
  cfg = EncoderConfig(vocab_size=len(tok), hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64,
                      max_position_embeddings=160)
  raw = BiEncoder(cfg, pooling="mean", normalize=False)
  bert.save_bi_encoder_st(init_params(raw, seed=0), raw, tok, str(tmp_path / "m"), max_seq_length=128)
  over = [("workdir", str(tmp_path / "r")), ("data.train", _tuples(tmp_path / "t.jsonl")),
          ("model.name", str(tmp_path / "m")), ("similarity", similarity), ("batch_size", "8")]
  setup = setup_retriever(build_config("configs/retriever.py:tiny", over))
  assert setup.fingerprint["similarity"] == similarity
  out = setup.export(setup.trainable, {}, str(tmp_path / "export"))
  modules = json.loads(open(f"{out}/modules.json").read())
  assert any(m["type"].endswith("Normalize") for m in modules) == normalised
  batch = jax.tree.map(jnp.asarray, setup.train.batch(0))
  loss, metrics = jax.jit(setup.loss_fn)(setup.trainable, {}, batch)
  assert np.isfinite(float(loss)) and (abs(float(metrics["pos_score"])) <= 1.0 + 1e-5) == normalised


def test_chunked_encoding_same_loss_and_gradients():
  """Towers(chunk=k): the rows k at a time under jax.checkpoint; the same embeddings (rows in order),
  loss and gradients as the whole batch at once, and fewer compiled temporaries."""
  cfg = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                      max_position_embeddings=32)
  module = BiEncoder(cfg, pooling="mean", normalize=True)
  params = {"query": init_params(module, 0)}
  rng = np.random.default_rng(1)
  b, length = 8, 24
  batch = {"query": rng.integers(1, 50, (b, length)), "pos": rng.integers(1, 50, (b, length)),
           "neg0": rng.integers(1, 50, (b, length)), "pos_key": np.arange(b, dtype=np.float32),
           "neg0_key": 100.0 + np.arange(b, dtype=np.float32), "weight": np.ones(b, np.float32)}
  for name in ("query", "pos", "neg0"):
    mask = np.ones((b, length), bool)
    mask[1, 20:] = False
    batch[name + "_mask"] = mask
  batch = jax.tree.map(jnp.asarray, batch)
  whole, chunked = Towers(module, shared=True), Towers(module, shared=True, chunk=2)
  emb = lambda t: jax.jit(lambda p: t.encode(p, "doc", batch["pos"], batch["pos_mask"], None))(params)
  np.testing.assert_allclose(np.asarray(emb(chunked)), np.asarray(emb(whole)), atol=1e-6)
  grad = lambda t: jax.jit(jax.value_and_grad(retriever_loss_fn(t, 1, 0.05), has_aux=True))
  (l1, _), g1 = grad(whole)(params, {}, batch)
  (l2, _), g2 = grad(chunked)(params, {}, batch)
  np.testing.assert_allclose(float(l2), float(l1), rtol=1e-6)
  for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-4, atol=1e-5)   # gradients ~0.01-0.6
  grad_of = lambda t: jax.jit(jax.grad(lambda p: retriever_loss_fn(t, 1, 0.05)(p, {}, batch)[0])).lower(params)
  temp = lambda t: grad_of(t).compile().memory_analysis().temp_size_in_bytes
  assert temp(chunked) < temp(whole)
  # a chunk that does not divide the rows: the whole batch at once
  np.testing.assert_allclose(np.asarray(emb(Towers(module, shared=True, chunk=3))), np.asarray(emb(whole)), atol=1e-6)
  # a token budget: 8 x 24 = 192 tokens over 96 -> chunks of 4 rows (the program of chunk=4), the same embeddings;
  # a budget the batch fits in: the whole batch's program
  by_tokens = Towers(module, shared=True, chunk_tokens=96)
  np.testing.assert_allclose(np.asarray(emb(by_tokens)), np.asarray(emb(whole)), atol=1e-6)
  program = lambda t: grad_of(t).as_text()
  assert program(by_tokens) == program(Towers(module, shared=True, chunk=4)) != program(whole)
  assert program(Towers(module, shared=True, chunk_tokens=192)) == program(whole)


@pytest.mark.parametrize("rows,length,budget,expected", [
    (32, 128, 4096, 0),      # fits: the whole batch
    (64, 256, 4096, 16),     # 16 x 256 = 4096
    (64, 64, 4096, 0),
    (32, 256, 4096, 16),
    (48, 256, 4096, 16),
    (40, 256, 4096, 10),     # 16 does not divide 40: the largest divisor under 16 rows
    (7, 1024, 4096, 1),      # a prime row count: one row at a time
    (4, 8192, 4096, 1),      # one row over the budget: still one row
    (64, 256, 0, 0),         # no budget: whole
])
def test_rows_per_chunk(rows, length, budget, expected):
  assert rows_per_chunk(rows, length, budget) == expected


def test_encode_chunking_config():
  cfg = build_config("configs/retriever.py", [])
  assert encode_chunking(cfg) == ({"chunk_tokens": CPU_ENCODE_TOKENS} if jax.default_backend() == "cpu" else {})
  cfg.encode_chunk = 8
  assert encode_chunking(cfg) == {"chunk": 8}
  cfg.encode_chunk = -2
  with pytest.raises(ConfigError, match="encode_chunk"):
    encode_chunking(cfg)


def test_max_examples_trains_on_a_seeded_subset_of_that_many_tuples(tmp_path):
  """data.max_examples / max_examples_like: a seeded random subset (the same on every call), as large
  as asked or as the other tuples (read as read_tuples reads them: skipped records do not count)."""
  from transformers import AutoTokenizer

  from qgjax.errors import InputError
  from qgjax.models import bert
  from qgjax.train.infonce import read_tuples, setup_retriever

  tok = AutoTokenizer.from_pretrained(bert.resolve_model_dir("all-minilm-l6-v2"))
  cfg = EncoderConfig(vocab_size=len(tok), hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64,
                      max_position_embeddings=160)
  raw = BiEncoder(cfg, pooling="mean", normalize=True)
  bert.save_bi_encoder_st(init_params(raw, seed=0), raw, tok, str(tmp_path / "m"), max_seq_length=128)
  train = _tuples(tmp_path / "t.jsonl")
  total = len(read_tuples(train)[0])
  other = tmp_path / "other.jsonl"   # 5 usable tuples and a skipped record
  other.write_text("".join(open(train).readlines()[:5]) + json.dumps({"doc_id": "x", "query": "q", "skip": "no"}) + "\n")
  over = [("workdir", str(tmp_path / "r")), ("data.train", train), ("model.name", str(tmp_path / "m"))]
  setup = lambda *extra: setup_retriever(build_config("configs/retriever.py:tiny", over + list(extra)))
  whole = setup()
  assert whole.info["train_examples"] == total > 7 and "max_examples" not in whole.fingerprint
  seven = setup(("data.max_examples", "7"))
  assert seven.info["train_examples"] == 7 and seven.info["tuples_read"] == total
  assert seven.fingerprint["max_examples"] == 7
  queries = lambda s: [tuple(t) for t in s.train.tokens["query"]]
  assert queries(seven) == queries(setup(("data.max_examples", "7")))   # seeded: the same subset again
  assert set(queries(seven)) < set(queries(whole))
  like = setup(("data.max_examples_like", str(other)))
  assert like.info["train_examples"] == 5 and like.fingerprint["max_examples"] == 5
  assert setup(("data.max_examples", str(total + 3))).info["train_examples"] == total
  with pytest.raises(ConfigError, match="not both"):
    setup(("data.max_examples", "3"), ("data.max_examples_like", str(other)))
  with pytest.raises(ConfigError, match=">= 0"):
    setup(("data.max_examples", "-1"))
  empty = tmp_path / "empty.jsonl"
  empty.write_text(json.dumps({"doc_id": "x", "query": "q", "skip": "no"}) + "\n")
  with pytest.raises(InputError, match="empty.jsonl"):
    setup(("data.max_examples_like", str(empty)))
