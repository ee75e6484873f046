"""LoRA: zero-init b reproduces the base exactly, merged == unmerged, only adapters train."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qgjax.errors import ConfigError
from qgjax.models.decoder import DecoderConfig, DecoderLM, init_cache
from qgjax.models.hf_checkpoint import flatten_tree
from qgjax.models.lora import (LoraConfig, apply_lora, apply_unmerged, init_lora, lora_target_paths, masked_optimizer,
                               merge_lora, trainable_mask, unmerge_lora)

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=8, tie_word_embeddings=True)
B, T = 2, 6


@functools.lru_cache(maxsize=None)
def _model(scan=True, dtype="float32"):
  """(model, params, inputs), built once per variant (jitted init)."""
  cfg = DecoderConfig(**TINY, scan_layers=scan, dtype=dtype, param_dtype=dtype)
  model = DecoderLM(cfg)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (B, T)), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(T), (B, T))
  mask = jnp.ones((B, T), bool).at[1, :2].set(False)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), tokens, pos, mask))["params"]
  # non-trivial base weights (init std 0.02 gives near-constant logits)
  params = jax.tree.map(lambda x: x * 10 if x.ndim >= 2 else x, params)
  return model, params, (tokens, pos, mask)


def _randomize_b(lora, key):
  """Non-zero b so the adapter changes the model."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(lora)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [
      0.3 * jax.random.normal(k, x.shape) if path[-1].key == "b" else x
      for k, (path, x) in zip(keys, leaves)])


@pytest.mark.parametrize("scan", [True, False])
def test_zero_b_is_exactly_base(scan):
  model, params, inputs = _model(scan)
  cfg = LoraConfig(rank=4, alpha=8.0, targets="q_proj|v_proj|gate_proj")
  lora = init_lora(jax.random.key(1), params, cfg)
  base, _ = model.apply({"params": params}, *inputs)
  merged, _ = model.apply({"params": apply_lora(params, lora, cfg.scale)}, *inputs)
  unmerged, _ = apply_unmerged(model, params, lora, cfg.scale, *inputs)
  np.testing.assert_array_equal(np.asarray(merged), np.asarray(base))
  np.testing.assert_array_equal(np.asarray(unmerged), np.asarray(base))
  flat = flatten_tree(lora)
  prefix = "layers/" if scan else "layers_0/"
  assert f"{prefix}attn/q_proj/a" in flat and f"{prefix}mlp/gate_proj/b" in flat
  assert not any("k_proj" in p or "o_proj" in p for p in flat)
  if scan:  # stacked: one adapter per layer, a ~ U(-1/sqrt(in), 1/sqrt(in))
    a = flat["layers/attn/q_proj/a"]
    assert a.shape == (2, 32, 4) and flat["layers/attn/v_proj/b"].shape == (2, 4, 16)
    assert float(jnp.abs(a).max()) <= 1 / np.sqrt(32) and float(jnp.std(a)) > 0.05
    assert not np.allclose(a[0], a[1])


@pytest.mark.parametrize("scan", [True, False])
def test_merged_equals_unmerged_and_unmerge_restores(scan):
  model, params, inputs = _model(scan)
  cfg = LoraConfig(rank=3, alpha=6.0, targets=r"attn/(q|v|o)_proj|down_proj")
  lora = _randomize_b(init_lora(jax.random.key(1), params, cfg), jax.random.key(2))
  base, _ = model.apply({"params": params}, *inputs)
  merged_params = merge_lora(params, lora, cfg.scale)
  merged, _ = model.apply({"params": merged_params}, *inputs)
  unmerged, _ = apply_unmerged(model, params, lora, cfg.scale, *inputs)
  assert np.abs(np.asarray(merged) - np.asarray(base)).max() > 0.1  # the adapter really changes the model
  np.testing.assert_allclose(np.asarray(merged), np.asarray(unmerged), atol=1e-4, rtol=1e-4)
  restored = unmerge_lora(merged_params, lora, cfg.scale)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), restored, params)
  # the delta equals the hand computation on one layer's kernel
  k = "layers/attn/q_proj" if scan else "layers_1/attn/q_proj"
  fl, fm, fp = flatten_tree(lora), flatten_tree(merged_params), flatten_tree(params)
  a, b = np.asarray(fl[k + "/a"]), np.asarray(fl[k + "/b"])
  np.testing.assert_allclose(np.asarray(fm[k + "/kernel"]), np.asarray(fp[k + "/kernel"]) + 2.0 * a @ b, atol=1e-5)


def test_unmerged_with_kv_cache_matches_merged():
  model, params, (tokens, pos, mask) = _model(True)
  cfg = LoraConfig(rank=2, alpha=4.0, targets="q_proj|k_proj|v_proj")
  lora = _randomize_b(init_lora(jax.random.key(3), params, cfg), jax.random.key(4))
  cache = init_cache(model.config, B, T + 2)
  kv_mask = jnp.zeros((B, T + 2), bool).at[:, :T].set(mask)
  a, ca = model.apply({"params": merge_lora(params, lora, cfg.scale)}, tokens, pos, kv_mask, cache, 0)
  b, cb = apply_unmerged(model, params, lora, cfg.scale, tokens, pos, kv_mask, cache, 0)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)
  np.testing.assert_allclose(np.asarray(ca.k), np.asarray(cb.k), atol=1e-4)


def _loss(logits, tokens):
  logp = jax.nn.log_softmax(logits[:, :-1])
  return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()


def test_only_adapters_get_gradients():
  model, params, inputs = _model(True)
  tokens = inputs[0]
  cfg = LoraConfig(rank=4, alpha=4.0, targets="q_proj|v_proj")
  lora = init_lora(jax.random.key(1), params, cfg)

  @jax.jit
  def loss_merged(lora_params, base):
    logits, _ = model.apply({"params": apply_lora(base, lora_params, cfg.scale)}, *inputs)
    return _loss(logits, tokens)

  def loss_unmerged(lora_params, base):
    logits, _ = apply_unmerged(model, base, lora_params, cfg.scale, *inputs)
    return _loss(logits, tokens)

  g = jax.jit(jax.grad(loss_merged))(lora, params)
  g2 = jax.jit(jax.grad(loss_unmerged))(lora, params)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-4), g, g2)
  fg = flatten_tree(g)
  assert set(fg) == set(flatten_tree(lora))
  # b = 0: dL/da = 0 exactly, dL/db != 0 (standard LoRA start)
  assert all(float(jnp.abs(v).max()) == 0.0 for k, v in fg.items() if k.endswith("/a"))
  assert all(float(jnp.abs(v).max()) > 0.0 for k, v in fg.items() if k.endswith("/b"))

  # one tree holding base + adapters: the masked optimizer leaves every base leaf bit-identical
  tree = {"base": params, "lora": lora}
  tx = masked_optimizer(optax.adam(1e-2), trainable_mask(tree, r"^lora/"))
  state = tx.init(tree)

  @jax.jit
  def train_step(tree, state):
    grads = jax.grad(lambda t: loss_merged(t["lora"], t["base"]))(tree)
    updates, state = tx.update(grads, state, tree)
    return optax.apply_updates(tree, updates), state, grads

  for _ in range(2):
    tree, state, grads = train_step(tree, state)
    # the base does get a gradient; the optimizer mask is what keeps it fixed
    assert float(jnp.abs(flatten_tree(grads)["base/layers/attn/q_proj/kernel"]).max()) > 0
  jax.tree.map(np.testing.assert_array_equal, tree["base"], params)
  assert float(jnp.abs(flatten_tree(tree["lora"])["layers/attn/q_proj/b"]).max()) > 0
  assert loss_merged(tree["lora"], params) < loss_merged(lora, params)


def test_bf16_base_keeps_dtype_and_bad_targets_error():
  model, params, inputs = _model(True, dtype="bfloat16")
  cfg = LoraConfig(rank=2, targets="o_proj")
  lora = init_lora(jax.random.key(0), params, cfg)
  assert flatten_tree(lora)["layers/attn/o_proj/a"].dtype == jnp.float32
  merged = apply_lora(params, lora, cfg.scale)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(merged))
  base, _ = model.apply({"params": params}, *inputs)
  out, _ = model.apply({"params": merged}, *inputs)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(base))
  with pytest.raises(ConfigError, match="match no kernel"):
    lora_target_paths(params, "nope_proj")
  assert lora_target_paths(params, "mlp") == [f"layers/mlp/{n}_proj/kernel" for n in ("down", "gate", "up")]


def test_remat_layers_give_the_same_gradients():
  """DecoderConfig(remat=True) (used for memory-bound training) changes no number."""
  model, params, inputs = _model(True)

  def loss(p, cfg):
    return _loss(DecoderLM(cfg).apply({"params": p}, *inputs)[0], inputs[0])

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  g1, g2 = grad(params, model.config), grad(params, model.config.replace(remat=True))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, g2)


def test_unmerged_adapter_on_the_untied_lm_head_equals_merged():
  """The decoder's own layers carry the low-rank path: Linear and the untied LM head alike."""
  cfg = DecoderConfig(**{**TINY, "tie_word_embeddings": False})
  model = DecoderLM(cfg)
  _, _, inputs = _model(True)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(5), *inputs))["params"]
  params = jax.tree.map(lambda x: x * 10 if x.ndim >= 2 else x, params)
  spec = LoraConfig(rank=2, alpha=4.0, targets="lm_head|up_proj")
  lora = _randomize_b(init_lora(jax.random.key(6), params, spec), jax.random.key(7))
  assert "lm_head/a" in flatten_tree(lora)
  base, _ = model.apply({"params": params}, *inputs)
  merged, _ = model.apply({"params": merge_lora(params, lora, spec.scale)}, *inputs)
  unmerged, _ = apply_unmerged(model, params, lora, spec.scale, *inputs)
  assert np.abs(np.asarray(merged) - np.asarray(base)).max() > 0.1
  np.testing.assert_allclose(np.asarray(unmerged), np.asarray(merged), atol=1e-4, rtol=1e-4)
