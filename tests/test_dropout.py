"""The hashed dropout mask (qgjax.models.dropout) and the head-major attention path that uses it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qgjax.models.dropout import Dropout, dropout, keep_mask
from qgjax.models.encoder_layers import head_major_attention

SHAPE = (16, 4, 128, 128)   # 1,048,576 elements, an attention-probability shape
N = int(np.prod(SHAPE))


def _mask(seed, keep=0.9, shape=SHAPE):
  return np.asarray(jax.jit(keep_mask, static_argnums=(1, 2))(jax.random.key(seed), keep, shape))


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.13])
def test_keep_fraction_matches_the_probability(keep):
  m = _mask(0, keep)
  sigma = np.sqrt(keep * (1 - keep) / N)
  assert abs(m.mean() - keep) < 5 * sigma


def test_mask_is_a_function_of_the_key_and_keys_are_independent():
  a, a_again, b = _mask(1), _mask(1), _mask(2)
  assert (a == a_again).all()
  # independent masks agree with probability p^2 + (1-p)^2 = 0.82 at p = 0.9
  agree, sigma = (a == b).mean(), np.sqrt(0.82 * 0.18 / N)
  assert abs(agree - 0.82) < 5 * sigma
  # keys from one split (as the layers get them) are as independent as unrelated seeds
  k1, k2 = jax.random.split(jax.random.key(3))
  c, d = np.asarray(keep_mask(k1, 0.9, SHAPE)), np.asarray(keep_mask(k2, 0.9, SHAPE))
  assert abs((c == d).mean() - 0.82) < 5 * sigma


def test_no_correlation_between_neighbours_along_any_axis():
  m = _mask(4).astype(np.float64)
  bound = 5 / np.sqrt(N)   # the sample correlation of independent bits has sd ~ 1/sqrt(N)
  for axis in range(m.ndim):
    x = np.moveaxis(m, axis, -1)
    r = np.corrcoef(x[..., :-1].ravel(), x[..., 1:].ravel())[0, 1]
    assert abs(r) < bound, (axis, r)
  # nor between elements 2^k apart in the flat order (counter-hash artefacts show up there)
  flat = m.ravel()
  for lag in (2, 64, 1024, 65536):
    assert abs(np.corrcoef(flat[:-lag], flat[lag:])[0, 1]) < bound, lag


def test_dropout_scales_kept_values_and_zeroes_the_rest():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 384)).astype(np.float32)) + 3.0
  y = np.asarray(dropout(x, 0.1, jax.random.key(5)))
  kept = y != 0
  np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / 0.9, rtol=1e-6)
  assert abs(kept.mean() - 0.9) < 5 * np.sqrt(0.09 / kept.size)
  assert dropout(x, 0.0, jax.random.key(5)) is x
  assert not np.asarray(dropout(x, 1.0, jax.random.key(5))).any()


def test_flax_module_is_identity_when_deterministic_and_keyed_otherwise():
  x = jnp.ones((8, 1000))
  mod = Dropout(0.25)
  assert (mod.apply({}, x, deterministic=True) == x).all()
  y1 = mod.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
  y2 = mod.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  np.testing.assert_allclose(np.unique(np.asarray(y1)), [0.0, 1 / 0.75], rtol=1e-6)
  assert (y1 != y2).any()


def _inputs(seed=0, b=3, t=5, s=7, n=2, h=8):
  r = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(r.normal(size=shape).astype(np.float32)) for shape in
             ((b, t, n, h), (b, s, n, h), (b, s, n, h)))
  mask = jnp.asarray(r.random((b, 1, t, s)) > 0.3).at[0, 0, 1].set(False)   # one fully masked row
  bias = jnp.asarray(r.normal(size=(1, n, t, s)).astype(np.float32))
  return q, k, v, mask, bias


def test_head_major_attention_equals_jax_dot_product_attention():
  q, k, v, mask, bias = _inputs()
  ours = head_major_attention(q, k, v, mask, bias)
  ref = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=2e-6)
  # the fully masked row attends uniformly: the mean of v
  np.testing.assert_allclose(np.asarray(ours[0, 1]), np.asarray(v[0].mean(axis=0)), atol=2e-6)


def test_attention_dropout_drops_probabilities_against_a_numpy_reference():
  q, k, v, mask, _ = _inputs(1)
  rng = jax.random.key(7)
  ours = np.asarray(head_major_attention(q, k, v, mask, dropout_rate=0.2, dropout_rng=rng))
  qn, kn, vn = (np.asarray(x, np.float64).transpose(0, 2, 1, 3) for x in (q, k, v))
  logits = np.where(np.asarray(mask), qn @ kn.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]), -np.inf)
  logits = np.where(np.isneginf(logits).all(-1, keepdims=True), 0.0, logits)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  keep = np.asarray(keep_mask(rng, 0.8, p.shape))
  ref = (np.where(keep, p / 0.8, 0.0) @ vn).transpose(0, 2, 1, 3)
  np.testing.assert_allclose(ours, ref, atol=1e-5)
