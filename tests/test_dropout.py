"""The hashed dropout mask (qgjax.models.dropout)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qgjax.models.dropout import Dropout, dropout, keep_mask

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
