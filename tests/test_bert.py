"""BERT-family encoders vs transformers PyTorch (tiny random configs), loaders, savers, heads."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qgjax.errors import CheckpointMismatchError, ConfigError
from qgjax.models import bert
from qgjax.models.hf_checkpoint import read_safetensors_dir, write_safetensors_dir

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.torch_ref

LOGICAL_NAMES = {"vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "layers", "relpos_buckets", "classes",
                 "prompt_len", None}
TOL = 1e-4


def _hf_config(kind: str, **kw):
  common = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=40, type_vocab_size=2, hidden_dropout_prob=0.1,
                attention_probs_dropout_prob=0.1)
  common.update(kw)
  if kind == "bert":
    return transformers.BertConfig(**common)
  return transformers.XLMRobertaConfig(pad_token_id=1, bos_token_id=0, eos_token_id=2, **common)


def _inputs(pad_id: int, lengths=(9, 5, 2), seed=0):
  """Right-padded random tokens (never the pad id inside a sequence), mask, token types."""
  rng = np.random.default_rng(seed)
  t = max(lengths)
  tokens = np.full((len(lengths), t), pad_id, np.int64)
  mask = np.zeros((len(lengths), t), np.int64)
  types = np.zeros((len(lengths), t), np.int64)
  for i, n in enumerate(lengths):
    tokens[i, :n] = rng.integers(3, 99, size=n)
    mask[i, :n] = 1
    types[i, n // 2:n] = 1
  return tokens, mask, types


def _save(model, path):
  torch.manual_seed(0)
  model.eval()
  model.save_pretrained(str(path), safe_serialization=True)
  return str(path)


def _randomise(model, seed=0):
  """Non-trivial LayerNorm / bias values (HF inits them to 1 / 0, which hides mapping bugs)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "LayerNorm" in name:
        p.copy_(p + 0.1 * torch.randn(p.shape, generator=g))
  return model


@pytest.mark.parametrize("kind,act", [("bert", "gelu"), ("xlm-roberta", "gelu_new")])
def test_encoder_hidden_states_match_torch(tmp_path, kind, act):
  cfg = _hf_config(kind, hidden_act=act)
  torch.manual_seed(0)
  ref_cls = transformers.BertModel if kind == "bert" else transformers.XLMRobertaModel
  ref = _randomise(ref_cls(cfg)).eval()
  path = _save(ref, tmp_path / "enc")
  module, params, tokenizer, info = bert.load_bi_encoder(path)
  assert tokenizer is None and info["pooling"] == "mean" and not info["normalize"]
  assert module.config.is_roberta == (kind == "xlm-roberta")
  tokens, mask, types = _inputs(cfg.pad_token_id)
  if kind == "xlm-roberta":
    types = np.zeros_like(types)  # type_vocab_size 2 here, but XLM-R inputs carry no segments
  with torch.no_grad():
    want = ref(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
               token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
  encoder = bert.BertEncoder(module.config)
  got = np.asarray(encoder.apply({"params": params["encoder"]}, jnp.asarray(tokens), jnp.asarray(mask, bool),
                                 jnp.asarray(types)))
  assert got.dtype == np.float32 and got.shape == want.shape
  np.testing.assert_array_less(np.abs(got - want).max(), TOL)
  # Bi-encoder mean pooling over the non-pad tokens (numpy reference on the torch hidden states).
  emb = np.asarray(module.apply({"params": params}, jnp.asarray(tokens), jnp.asarray(mask, bool), jnp.asarray(types)))
  m = mask[..., None].astype(np.float32)
  np.testing.assert_allclose(emb, (want * m).sum(1) / m.sum(1), atol=TOL)


def test_too_long_input_is_an_error_not_a_clamped_lookup():
  cfg = bert.EncoderConfig(vocab_size=20, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=8,
                           max_position_embeddings=6, model_type="xlm-roberta", pad_token_id=1)
  module = bert.BiEncoder(cfg)
  with pytest.raises(ConfigError, match="exceeds the encoder's 4 positions"):
    jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 5), jnp.int32), jnp.ones((1, 5), bool)))


def test_xlmr_positions_follow_non_pad_tokens():
  cfg = bert.EncoderConfig(model_type="xlm-roberta", pad_token_id=1)
  tokens = jnp.asarray([[0, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1]])
  np.testing.assert_array_equal(bert.position_ids(cfg, tokens), [[2, 3, 4, 5, 1, 1], [2, 3, 4, 1, 1, 1]])
  ref = transformers.models.xlm_roberta.modeling_xlm_roberta.XLMRobertaEmbeddings
  want = ref.create_position_ids_from_input_ids(torch.tensor(np.asarray(tokens)), 1).numpy()
  np.testing.assert_array_equal(bert.position_ids(cfg, tokens), want)


@pytest.mark.parametrize("kind,num_labels", [("bert", 1), ("bert", 2), ("xlm-roberta", 3)])
def test_cross_encoder_logits_match_torch_and_save_roundtrip(tmp_path, kind, num_labels):
  cfg = _hf_config(kind, num_labels=num_labels)
  torch.manual_seed(1)
  ref_cls = (transformers.BertForSequenceClassification if kind == "bert"
             else transformers.XLMRobertaForSequenceClassification)
  ref = _randomise(ref_cls(cfg), seed=1).eval()
  path = _save(ref, tmp_path / "ce")
  module, params, _, info = bert.load_cross_encoder(path)
  assert module.config.num_labels == num_labels and info["initialised"] == []
  tokens, mask, types = _inputs(cfg.pad_token_id, lengths=(3, 8, 6, 1), seed=2)
  if kind == "xlm-roberta":
    types = np.zeros_like(types)
  with torch.no_grad():
    want = ref(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
               token_type_ids=torch.tensor(types)).logits.numpy()
  got = np.asarray(module.apply({"params": params}, jnp.asarray(tokens), jnp.asarray(mask, bool), jnp.asarray(types)))
  assert got.shape == (4, num_labels)
  np.testing.assert_array_less(np.abs(got - want).max(), TOL)

  # Saved back, transformers reads the same model.
  out = bert.save_cross_encoder_hf(params, module, None, str(tmp_path / "saved"))
  back = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  assert type(back) is ref_cls
  with torch.no_grad():
    again = back(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                 token_type_ids=torch.tensor(types)).logits.numpy()
  np.testing.assert_allclose(again, want, atol=TOL)


def test_scan_layers_and_remat_give_the_same_outputs(tmp_path):
  ref = _randomise(transformers.BertModel(_hf_config("bert"))).eval()
  path = _save(ref, tmp_path / "enc")
  module, params, _, _ = bert.load_bi_encoder(path)
  smod, sparams, _, _ = bert.load_bi_encoder(path, scan_layers=True, remat=True)
  assert sparams["encoder"]["layers"]["query"]["kernel"].shape == (2, 32, 32)
  tokens, mask, _ = _inputs(0)
  a = module.apply({"params": params}, tokens, mask.astype(bool))
  b = smod.apply({"params": sparams}, tokens, mask.astype(bool))
  np.testing.assert_allclose(a, b, atol=1e-5)
  # scan + remat gives the unrolled model's gradients: layer i of the stacked tensor is layers_i
  loss = lambda mod: jax.jit(jax.grad(lambda p: (mod.apply({"params": p}, tokens, mask.astype(bool)) ** 2).sum()))
  g_scan, g_flat = loss(smod)(sparams), loss(module)(params)
  stacked = jax.tree.leaves_with_path(g_scan["encoder"]["layers"])
  assert stacked
  for path, leaf in stacked:
    for i in range(leaf.shape[0]):
      flat = g_flat["encoder"][f"layers_{i}"]
      for k in path:
        flat = flat[k.key]
      np.testing.assert_allclose(leaf[i], flat, rtol=1e-4, atol=1e-6, err_msg=f"layer {i} {jax.tree_util.keystr(path)}")
  np.testing.assert_allclose(g_scan["encoder"]["word_embeddings"]["embedding"], g_flat["encoder"]["word_embeddings"]["embedding"],
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scan", [False, True])
def test_every_param_has_logical_axes(scan):
  cfg = bert.EncoderConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=24,
                           max_position_embeddings=16, num_labels=2, scan_layers=scan)
  for module in (bert.BiEncoder(cfg), bert.CrossEncoder(cfg)):
    variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32),
                                                   jnp.ones((1, 4), bool)))
    leaves = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    for leaf in leaves:
      assert set(leaf.names) <= LOGICAL_NAMES and len(leaf.names) == len(leaf.value.shape)
    if scan:
      assert all(leaf.names[0] == "layers" for leaf in leaves if len(leaf.value.shape) == 3)


def test_mismatched_checkpoint_lists_every_tensor(tmp_path):
  ref = transformers.BertModel(_hf_config("bert"))
  path = _save(ref, tmp_path / "enc")
  tensors = read_safetensors_dir(path)
  tensors["encoder.layer.1.output.dense.weight"] = np.zeros((32, 36), np.float32)  # wrong shape
  del tensors["encoder.layer.0.attention.self.key.bias"]                           # missing
  tensors["encoder.layer.0.surprise.weight"] = np.zeros((2,), np.float32)          # unexpected
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  write_safetensors_dir(tensors, path, config)
  with pytest.raises(CheckpointMismatchError) as e:
    bert.load_bi_encoder(path)
  msg = str(e.value)
  for name in ("encoder.layer.1.output.dense.weight", "encoder.layer.0.attention.self.key.bias",
               "encoder.layer.0.surprise.weight", "(32, 36)"):
    assert name in msg
  # A config with more layers than the checkpoint: the missing layer's tensors are listed.
  config["num_hidden_layers"] = 3
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  with pytest.raises(CheckpointMismatchError, match=r"encoder\.layer\.2\.attention\.self\.query\.weight"):
    bert.load_bi_encoder(path)


def _tiny_tokenizer():
  words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
      "the a an of to and in is on for with cat dog sat mat ran fast slow red blue green query doc "
      "search engine result page what how why who where when water fire earth air").split()
  tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)}, model_max_length=32)
  assert tokenizer("the cat")["input_ids"] == [2, 5, 16, 3]
  return tokenizer


def test_saved_bi_encoder_loads_in_sentence_transformers(tmp_path):
  st = pytest.importorskip("sentence_transformers")
  tokenizer = _tiny_tokenizer()
  cfg = bert.EncoderConfig(vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=4,
                           intermediate_size=48, max_position_embeddings=40)
  texts = ["the cat sat on the mat", "what is water", "how fast ran the red dog on the blue mat and the green"]
  for pooling, normalize in (("cls", True), ("mean", False)):
    module = bert.BiEncoder(cfg, pooling=pooling, normalize=normalize)
    params = bert.init_params(module, seed=3)
    out = str(tmp_path / f"st_{pooling}")
    bert.save_bi_encoder_st(params, module, tokenizer, out, max_seq_length=16)
    ours = bert.encode_texts(module, params, tokenizer, texts, batch_size=2, max_len=16, length_buckets=(8,))
    ref = st.SentenceTransformer(out, device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    # ...and qgjax reads its own directory back to the same module.
    module2, params2, tok2, info = bert.load_bi_encoder(out)
    assert (module2.pooling, module2.normalize, info["max_seq_length"]) == (pooling, normalize, 16)
    again = bert.encode_texts(module2, params2, tok2, texts, batch_size=2, max_len=16, length_buckets=(8,))
    np.testing.assert_allclose(again, ours, atol=1e-6)


def test_encode_texts_buckets_shapes_and_keeps_order(tmp_path):
  tokenizer = _tiny_tokenizer()
  cfg = bert.EncoderConfig(vocab_size=len(tokenizer), hidden_size=16, num_layers=1, num_heads=2,
                           intermediate_size=24, max_position_embeddings=40)
  module = bert.BiEncoder(cfg, pooling="mean", normalize=True)
  params = bert.init_params(module, seed=4)
  rng = np.random.default_rng(0)
  vocab = sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get)[5:]
  texts = [" ".join(rng.choice(vocab, size=int(n))) for n in rng.integers(1, 20, size=23)]
  got = bert.encode_texts(module, params, tokenizer, texts, batch_size=4, max_len=16, length_buckets=(4, 8))
  # Reference: every text in one batch, padded to max_len, in input order.
  enc = tokenizer(texts, truncation=True, max_length=16, padding="max_length", return_tensors="np")
  want = module.apply({"params": params}, jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"], bool))
  np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)
  from qgjax.models.text_encoding import jitted_apply
  assert jitted_apply(module).compiled_shapes() == 3  # one compiled shape per bucket: 4, 8, 16


def test_cross_encoder_from_plain_encoder_needs_new_head(tmp_path):
  ref = transformers.BertModel(_hf_config("bert"))
  path = _save(ref, tmp_path / "enc")
  with pytest.raises(CheckpointMismatchError, match="classifier.weight.*new_head=True"):
    bert.load_cross_encoder(path)
  module, params, _, info = bert.load_cross_encoder(path, new_head=True, num_labels=1)
  assert sorted(info["initialised"]) == ["classifier.bias", "classifier.weight"]  # pooler came from the checkpoint
  np.testing.assert_array_equal(params["pooler"]["kernel"], ref.pooler.dense.weight.detach().numpy().T)
  tokenizer = _tiny_tokenizer()
  scores = bert.score_pairs(module, params, tokenizer, ["what is water", "the cat"],
                            ["water is wet", "a dog ran"], batch_size=2, max_len=16, length_buckets=(8,))
  enc = tokenizer(["what is water"], ["water is wet"], return_tensors="np")
  want = module.apply({"params": params}, jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"], bool),
                      jnp.asarray(enc["token_type_ids"]))
  assert scores.shape == (2, 1)
  np.testing.assert_allclose(scores[0], np.asarray(want)[0], atol=1e-5)


def test_exact_gelu_matches_the_erf_formula_in_f64():
  """HF's "gelu" (torch's exact GELU): 0.5 x (1 + erf(x / sqrt 2)), against math.erf in f64."""
  import math

  from qgjax.models.encoder_layers import activation
  x = np.linspace(-9.0, 9.0, 2001).astype(np.float32)
  ref = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.astype(np.float64)])
  got = np.asarray(jax.jit(activation("gelu"))(jnp.asarray(x)))
  np.testing.assert_allclose(got, ref, rtol=1e-6, atol=2e-6)
  grad = np.asarray(jax.jit(jax.vmap(jax.grad(activation("gelu"))))(jnp.asarray(x)))
  cdf = np.array([0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.astype(np.float64)])
  pdf = np.exp(-0.5 * x.astype(np.float64) ** 2) / math.sqrt(2.0 * math.pi)
  np.testing.assert_allclose(grad, cdf + x * pdf, rtol=1e-5, atol=2e-6)
