"""The accelerator defaults (docs/accelerators.md): how "auto" resolves the compute dtype and the
attention implementation per backend, which calls cuDNN's fused kernel takes, and that a model run
in bfloat16 (asked for explicitly, on CPU) still hands back f32 log-probs, losses and scores close
to the f32 model's."""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from qgjax.errors import ConfigError
from qgjax.models.attention_ops import cudnn_fits, fused_attention, head_major_attention, mesh_splits_attention
from qgjax.parallel.backend import cudnn_max_head_dim, model_numerics, resolve_attention

BF16, F16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32)


# ------------------------------------------------------------------------------------------------
# Resolution


@pytest.mark.parametrize("setting,backend,dtype,expected", [
    ("auto", "gpu", BF16, "cudnn"), ("auto", "gpu", F16, "cudnn"), ("auto", "gpu", F32, "xla"),
    ("auto", "tpu", BF16, "xla"), ("auto", "cpu", BF16, "xla"), ("auto", "cpu", F32, "xla"),
    (None, "gpu", BF16, "cudnn"), ("AUTO", "gpu", BF16, "cudnn"),
    ("xla", "gpu", BF16, "xla"), ("cudnn", "cpu", F32, "cudnn")])
def test_resolve_attention(setting, backend, dtype, expected):
  assert resolve_attention(setting, backend, dtype) == expected


@pytest.mark.parametrize("backend,dtype,attention,expected", [
    ("gpu", "auto", "auto", ("bfloat16", "cudnn")), ("tpu", "auto", "auto", ("bfloat16", "xla")),
    ("cpu", "auto", "auto", ("float32", "xla")), ("gpu", "float32", "auto", ("float32", "xla")),
    ("gpu", "auto", "xla", ("bfloat16", "xla")), ("cpu", "bf16", "auto", ("bfloat16", "xla"))])
def test_model_numerics_of_a_config_group(backend, dtype, attention, expected):
  group = ml_collections.ConfigDict(dict(dtype=dtype, attention_impl=attention))
  assert model_numerics(group, backend=backend) == expected


def test_bad_settings_name_the_field():
  with pytest.raises(ConfigError, match=r"config\.llm_judge\.attention_impl: unknown attention_impl 'flash'"):
    model_numerics(ml_collections.ConfigDict(dict(dtype="auto", attention_impl="flash")), "config.llm_judge", "gpu")
  with pytest.raises(ConfigError, match=r"config\.model\.dtype: unknown dtype 'int8'"):
    model_numerics(ml_collections.ConfigDict(dict(dtype="int8", attention_impl="auto")), backend="cpu")


@pytest.mark.parametrize("q,k,dtype,masked,bias,max_h,fits", [
    ((2, 16, 4, 64), (2, 16, 4, 64), BF16, True, False, 128, True),      # the common case
    ((2, 16, 4, 64), (2, 16, 4, 64), F16, True, False, 128, True),
    ((2, 16, 4, 64), (2, 16, 4, 64), F32, True, False, 128, False),     # f32: not the flash kernel's
    ((2, 16, 4, 60), (2, 16, 4, 60), BF16, True, False, 128, False),    # head dim not a multiple of 8
    ((2, 16, 4, 256), (2, 16, 4, 256), BF16, True, False, 128, False),  # > 128 before Hopper
    ((2, 16, 4, 256), (2, 16, 4, 256), BF16, True, False, 256, True),   # Hopper takes 256
    ((2, 16, 4, 64), (2, 16, 4, 64), BF16, True, False, 0, False),      # no usable cuDNN
    ((2, 15, 4, 64), (2, 15, 4, 64), BF16, True, False, 128, False),    # masked, odd T: no biased backward
    ((2, 1, 4, 64), (2, 32, 4, 64), BF16, True, False, 128, False),     # a masked decode step (T = 1)
    ((2, 15, 4, 64), (2, 15, 4, 64), BF16, False, False, 128, True),    # unmasked: any length
    ((2, 16, 8, 64), (2, 16, 2, 64), BF16, True, False, 128, True),     # grouped-query heads
    ((2, 16, 6, 64), (2, 16, 4, 64), BF16, True, False, 128, False),    # N not a multiple of K
    ((2, 16, 4, 64), (2, 16, 4, 64), BF16, True, True, 128, False)])    # a learned bias (T5)
def test_cudnn_fits(q, k, dtype, masked, bias, max_h, fits):
  assert cudnn_fits(q, k, dtype, masked=masked, has_bias=bias, max_head_dim=max_h) is fits
  # heads or length split over devices (tensor parallelism): never
  assert cudnn_fits(q, k, dtype, masked=masked, has_bias=bias, max_head_dim=max_h, split=True) is False


def test_mesh_splits_attention_under_tensor_parallelism():
  """Outside a mesh and under a data x fsdp mesh attention is whole on each device; a tensor axis
  splits the heads."""
  from qgjax.parallel.mesh import make_mesh
  from qgjax.parallel.sharding import activate, rules_for

  seen = {}

  def probe(name):
    def f(x):
      seen[name] = mesh_splits_attention()
      return x
    return f

  jax.jit(probe("none"))(np.ones(2))
  for name, spec in (("data_fsdp", [("data", 2), ("fsdp", 4)]), ("tensor", [("data", 2), ("tensor", 4)])):
    mesh = make_mesh(spec)
    with activate(mesh, rules_for(mesh)):
      jax.jit(probe(name))(np.ones(2))
  assert seen == {"none": False, "data_fsdp": False, "tensor": True}


def test_cudnn_call_falls_back_to_xla_without_a_cuda_gpu():
  """On this host (no CUDA GPU) cuDNN takes no call: impl="cudnn" runs XLA's attention, equal to
  the head-major reference, instead of failing."""
  assert cudnn_max_head_dim() == 0
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 6, 4, 8)), jnp.bfloat16) for _ in range(3))
  mask = jnp.asarray(rng.random((2, 1, 6, 6)) > 0.3) | jnp.eye(6, dtype=bool)
  out = fused_attention(q, k, v, mask, impl="cudnn")
  ref = head_major_attention(q, k, v, mask)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=2e-2)


# ------------------------------------------------------------------------------------------------
# bfloat16 compute, f32 results


def _close(a, b, atol):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=0)


def test_decoder_in_bf16_gives_f32_logprobs_and_dpo_loss_close_to_f32():
  from qgjax.models.decoder import DecoderConfig, DecoderLM
  from qgjax.sampling.logits import SamplingParams, choose_tokens
  from qgjax.train import logprobs as L
  from qgjax.train.losses import dpo_loss

  cfg = DecoderConfig(vocab_size=37, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8)
  params = jax.jit(DecoderLM(cfg).init)(jax.random.key(0), jnp.ones((1, 3), jnp.int32), jnp.zeros((1, 3), jnp.int32))
  rng = np.random.default_rng(1)
  prompt = rng.integers(1, 37, (3, 6)).astype(np.int32)
  pm = np.ones((3, 6), bool)
  pm[0, :2] = False
  ch, rj = (rng.integers(1, 37, (3, 4)).astype(np.int32) for _ in range(2))
  cm, rm = np.ones((3, 4), bool), np.ones((3, 4), bool)
  cm[1, 2:] = False

  @functools.partial(jax.jit, static_argnums=0)
  def run(dtype, p):
    model = DecoderLM(cfg.replace(dtype=dtype))   # parameters stay f32 either way
    c, r = L.pair_logprobs(L.decoder_fns(model, p), prompt, pm, ch, cm, rj, rm)
    logits = model.apply(p, jnp.asarray(prompt), L.positions_from_mask(pm), pm)[0]
    return c, r, dpo_loss(c.total, r.total, c.total - 1.0, r.total + 0.5, beta=0.1), logits

  c32, r32, loss32, logits32 = run("float32", params)
  c16, r16, loss16, logits16 = run("bfloat16", params)
  for x in (c16.token, c16.total, r16.total, loss16.loss, logits16):
    assert x.dtype == jnp.float32
  _close(c16.token, c32.token, 0.02)
  _close(r16.total, r32.total, 0.05)
  _close(loss16.loss, loss32.loss, 0.01)
  _close(logits16, logits32, 0.02)
  # the sampler's log-prob of its choice is f32 (log_softmax of f32 logits)
  tokens, lps = choose_tokens(logits16[:, -1], jax.random.split(jax.random.key(0), 3), SamplingParams(temperature=0.0))
  assert lps.dtype == jnp.float32
  _close(lps, jax.nn.log_softmax(logits32[:, -1])[jnp.arange(3), tokens], 0.02)


def test_t5_in_bf16_gives_f32_logits_and_logprobs_close_to_f32():
  from qgjax.models.t5 import T5Config, T5Model, init_params
  from qgjax.train import logprobs as L

  # untied: the separate LM head (Flan-T5's), whose logits accumulate in f32
  cfg = T5Config(vocab_size=40, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4,
                 dropout_rate=0.0, tie_word_embeddings=False)
  params = init_params(T5Model(cfg), 0)
  rng = np.random.default_rng(2)
  src, tgt = rng.integers(2, 40, (2, 7)).astype(np.int32), rng.integers(2, 40, (2, 5)).astype(np.int32)
  smask, tmask = np.ones((2, 7), bool), np.ones((2, 5), bool)
  smask[1, 5:] = False

  def run(dtype):
    model = T5Model(cfg.replace(dtype=dtype))
    return jax.jit(lambda p: L.encdec_completion_logprobs(L.t5_fns(model, {"params": p}), src, smask, tgt,
                                                          tmask))(params)

  lp32, lp16 = run("float32"), run("bfloat16")
  assert lp16.token.dtype == jnp.float32 and lp16.total.dtype == jnp.float32
  _close(lp16.token, lp32.token, 0.05)


def test_bert_towers_in_bf16_give_f32_scores_and_losses_close_to_f32():
  from qgjax.models.bert import BiEncoder, CrossEncoder, EncoderConfig, init_params
  from qgjax.train.cross_encoder import readqg_ce_loss
  from qgjax.train.infonce import infonce_loss

  cfg = EncoderConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                      max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)
  rng = np.random.default_rng(3)
  tokens = rng.integers(1, 50, (6, 9)).astype(np.int32)
  mask = np.ones((6, 9), bool)
  mask[2, 6:] = False
  bi_params = init_params(BiEncoder(cfg, normalize=True), 0)
  ce_params = init_params(CrossEncoder(cfg), 0)

  @functools.partial(jax.jit, static_argnums=2)
  def run_jit(bi_params, ce_params, c):
    emb = BiEncoder(c, normalize=True).apply({"params": bi_params}, tokens, mask)
    loss, _ = infonce_loss(emb[:3], emb[3:], temperature=0.05)
    scores = CrossEncoder(c).apply({"params": ce_params}, tokens, mask)[:, 0]
    ce, _ = readqg_ce_loss(scores[:2], scores[2:4], scores[4:])
    return emb, loss, scores, ce

  run = lambda dtype: run_jit(bi_params, ce_params, dataclasses.replace(cfg, dtype=dtype))

  emb32, loss32, s32, ce32 = run("float32")
  emb16, loss16, s16, ce16 = run("bfloat16")
  for x in (emb16, loss16, s16, ce16):
    assert x.dtype == jnp.float32
  _close(emb16, emb32, 0.02)
  _close(loss16, loss32, 0.1)    # InfoNCE at temperature 0.05 scales score errors by 20
  _close(s16, s32, 0.02)
  _close(ce16, ce32, 0.02)


def test_generate_job_in_bf16_reports_it_and_keeps_f32_logprobs(tmp_path):
  """configs/generate.py with --config.model.dtype=bfloat16 on CPU: the summary says bfloat16 and
  XLA, and each greedy query's log-prob is close to the f32 run's for the same query."""
  from qgjax.config import build_config
  from qgjax.data.sharded_writer import iter_sharded
  from qgjax.jobs import generate
  from tiny_lm import make_tiny_lm

  tiny = make_tiny_lm(str(tmp_path / "tiny"))
  config_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "generate.py")
  runs = {}
  for dtype in ("float32", "bfloat16"):
    config = build_config(f"{config_path}:mode=plain", [
        ("model.name", tiny), ("model.dtype", dtype), ("output_dir", str(tmp_path / dtype)), ("data.limit", "3"),
        ("batch_size", "3"), ("buckets", "[160]"), ("sampling.num_samples", "1"), ("sampling.temperature", "0"),
        ("sampling.max_new_tokens", "4"), ("sampling.stop_at_newline", "false"), ("postprocess.drop_copied", "false"),
        ("log_every_s", "0"), ("print_examples", "0"), ("num_devices", "1")])
    summary = generate.run(config)
    assert (summary["dtype"], summary["attention"]) == (dtype, "xla")
    runs[dtype] = {r["doc_id"]: r for r in iter_sharded(tmp_path / dtype)}
  same = [d for d, r in runs["bfloat16"].items() if d in runs["float32"] and runs["float32"][d]["query"] == r["query"]]
  assert same, "bf16 greedy decoding produced no query that f32 also produced"
  for d in same:
    assert abs(runs["bfloat16"][d]["logprob"] - runs["float32"][d]["logprob"]) < 0.05 * runs["float32"][d]["num_tokens"]
