"""DecoderLM's shared-prompt mode (`decode_shared_prompt`, qgjax.models.shared_prompt) against
the plain full-attention forward over [prompt; sample], on a tiny random decoder in f32."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from qgjax.models.decoder import DecoderConfig, DecoderLM, init_cache, positions_from_mask, unrolled
from qgjax.models.shared_prompt import PromptCache, gather_rows, init_sample_cache

TOL = 1e-5
# grouped-query attention (4 query heads over 2 kv heads), biases on q/k/v and o, untied head
CONFIG = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8, attention_bias=True, attention_out_bias=True,
                       max_position_embeddings=64, rms_norm_eps=1e-5)


def _random_params(config: DecoderConfig, seed: int = 0):
  """O(1) logits: every weight and bias random, norm scales around 1."""
  model = DecoderLM(config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32),
                                             jnp.zeros((1, 2), jnp.int32))["params"])
  rng = np.random.default_rng(seed)
  leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
  out = []
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path)
    x = rng.standard_normal(leaf.shape).astype(np.float32)
    out.append(jnp.asarray(1.0 + 0.2 * x if "norm" in name else 0.3 * x))
  return model, jax.tree_util.tree_unflatten(tree, out)


def _full_logits(model, params, tokens, mask):
  logits, _ = model.apply({"params": params}, jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)),
                          jnp.asarray(mask))
  return np.asarray(logits)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_shared_prompt_decode_equals_full_forward_over_prompt_and_sample(scan_layers):
  model, params = _random_params(CONFIG.replace(scan_layers=scan_layers))
  b, p, n, steps = 3, 7, 2, 4
  rng = np.random.default_rng(1)
  lengths = np.array([7, 4, 1])                                        # left-padded prompts
  mask = np.arange(p)[None, :] >= (p - lengths)[:, None]
  prompts = np.where(mask, rng.integers(1, CONFIG.vocab_size, (b, p)), 0).astype(np.int32)
  samples = rng.integers(1, CONFIG.vocab_size, (b * n, steps)).astype(np.int32)   # row r continues prompt r // n

  umodel, uparams = unrolled(model, params)
  apply = lambda *a, **k: umodel.apply({"params": uparams}, *a, **k)
  last, cache = apply(jnp.asarray(prompts), positions_from_mask(jnp.asarray(mask)), jnp.asarray(mask),
                      init_cache(CONFIG, b, p), 0, return_last_only=True)
  assert last.shape == (b, 1, CONFIG.vocab_size)
  np.testing.assert_allclose(np.asarray(last[:, 0]), _full_logits(model, params, prompts, mask)[:, -1],
                             rtol=TOL, atol=TOL)

  prompt = PromptCache.from_prefill(cache, jnp.asarray(mask))
  new = init_sample_cache(CONFIG, b * n, steps)
  rows_prompt, rows_mask = np.repeat(prompts, n, axis=0), np.repeat(mask, n, axis=0)
  for t in range(steps):
    logits, new = apply(jnp.asarray(samples[:, t]), jnp.asarray(np.repeat(lengths, n) + t, jnp.int32), prompt, new,
                        t, method=DecoderLM.decode_shared_prompt)
    tokens = np.concatenate([rows_prompt, samples[:, :t + 1]], axis=1)
    full_mask = np.concatenate([rows_mask, np.ones((b * n, t + 1), bool)], axis=1)
    want = _full_logits(model, params, tokens, full_mask)[:, -1]
    np.testing.assert_allclose(np.asarray(logits), want, rtol=TOL, atol=TOL, err_msg=f"step {t}")


def test_gathered_rows_continue_the_gathered_samples():
  """Beam search reorders the sample cache: after gather_rows, row r continues sample rows[r]."""
  model, params = _random_params(CONFIG.replace(scan_layers=False), seed=2)
  b, p, n = 2, 5, 3
  rng = np.random.default_rng(3)
  mask = np.ones((b, p), bool)
  prompts = rng.integers(1, CONFIG.vocab_size, (b, p)).astype(np.int32)
  samples = rng.integers(1, CONFIG.vocab_size, (b * n, 2)).astype(np.int32)
  apply = lambda *a, **k: model.apply({"params": params}, *a, **k)
  _, cache = apply(jnp.asarray(prompts), positions_from_mask(jnp.asarray(mask)), jnp.asarray(mask),
                   init_cache(CONFIG, b, p), 0, return_last_only=True)
  prompt = PromptCache.from_prefill(cache, jnp.asarray(mask))
  pos = jnp.full((b * n,), p, jnp.int32)
  _, new = apply(jnp.asarray(samples[:, 0]), pos, prompt, init_sample_cache(CONFIG, b * n, 2), 0,
                 method=DecoderLM.decode_shared_prompt)
  rows = np.array([2, 2, 0, 4, 3, 3])                                  # stays within each prompt's rows
  logits, _ = apply(jnp.asarray(samples[rows, 1]), pos + 1, prompt, gather_rows(new, jnp.asarray(rows)), 1,
                    method=DecoderLM.decode_shared_prompt)
  tokens = np.concatenate([np.repeat(prompts, n, axis=0)[rows], samples[rows]], axis=1)
  want = _full_logits(model, params, tokens, np.ones(tokens.shape, bool))[:, -1]
  np.testing.assert_allclose(np.asarray(logits), want, rtol=TOL, atol=TOL)


def test_shared_prompt_decode_needs_unrolled_layers():
  model, params = _random_params(CONFIG)
  prompt = PromptCache(k=(), v=(), mask=jnp.ones((1, 2), bool))
  with pytest.raises(ValueError, match="unrolled"):
    model.apply({"params": params}, jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32), prompt,
                init_sample_cache(CONFIG, 1, 2), 0, method=DecoderLM.decode_shared_prompt)
