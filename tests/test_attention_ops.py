"""Head-major softmax attention (qgjax.models.attention_ops): encoder (bias, dropout) and
grouped-query decoder cases against numpy loops and `jax.nn.dot_product_attention`."""

import jax
import jax.numpy as jnp
import numpy as np

from qgjax.models.attention_ops import causal_blocked_attention, head_major_attention
from qgjax.models.decoder import attention_mask
from qgjax.models.dropout import keep_mask


def _inputs(seed=0, b=3, t=5, s=7, n=2, h=8):
  r = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(r.normal(size=shape).astype(np.float32)) for shape in
             ((b, t, n, h), (b, s, n, h), (b, s, n, h)))
  mask = jnp.asarray(r.random((b, 1, t, s)) > 0.3).at[0, 0, 1].set(False)   # one fully masked row
  bias = jnp.asarray(r.normal(size=(1, n, t, s)).astype(np.float32))
  return q, k, v, mask, bias


def _numpy_attention(q, k, v, mask, bias=None, keep=None, rate=0.0):
  """float64 reference: q [B, T, N, H], k/v [B, S, K, H] (kv heads repeated to N); a fully
  masked row attends uniformly; `keep` (bool [B, N, T, S]) drops probabilities at `rate`."""
  n = q.shape[2]
  qn = np.asarray(q, np.float64).transpose(0, 2, 1, 3)
  kn, vn = (np.repeat(np.asarray(x, np.float64), n // x.shape[2], axis=2).transpose(0, 2, 1, 3) for x in (k, v))
  logits = qn @ kn.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]) + (0.0 if bias is None else np.asarray(bias))
  logits = np.where(np.asarray(mask), logits, -np.inf)
  logits = np.where(np.isneginf(logits).all(-1, keepdims=True), 0.0, logits)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  if keep is not None:
    p = np.where(keep, p / (1.0 - rate), 0.0)
  return (p @ vn).transpose(0, 2, 1, 3)


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
  keep = np.asarray(keep_mask(rng, 0.8, (q.shape[0], q.shape[2], q.shape[1], k.shape[1])))
  np.testing.assert_allclose(ours, _numpy_attention(q, k, v, mask, keep=keep, rate=0.2), atol=1e-5)


def test_grouped_query_attention_equals_numpy_and_jax_dot_product_attention():
  """The CPU attention path (kv-head-major GQA) against a per-head numpy loop and jax.nn's."""
  b, t, n, kvh, h = 2, 6, 6, 2, 4
  r = np.random.default_rng(0)
  q = r.normal(size=(b, t, n, h)).astype(np.float32)
  k, v = (r.normal(size=(b, t, kvh, h)).astype(np.float32) for _ in range(2))
  kv_mask = np.ones((b, t), bool)
  kv_mask[1, :2] = False                                    # left padding on the second row
  mask = attention_mask(jnp.asarray(kv_mask), t, None)      # causal & padding [B, 1, T, T]
  ours = np.asarray(head_major_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask, scale=h ** -0.5))
  ref = np.zeros_like(ours)
  for bi in range(b):
    for head in range(n):
      kv = head // (n // kvh)                               # query head -> its kv head
      for ti in range(t):
        keys = [s for s in range(t) if kv_mask[bi, s] and s <= ti]
        if not keys:                                        # fully masked (a pad query): mean of v
          ref[bi, ti, head] = v[bi, :, kv].mean(0)
          continue
        logits = np.array([q[bi, ti, head] @ k[bi, s, kv] for s in keys]) * h ** -0.5
        p = np.exp(logits - logits.max())
        ref[bi, ti, head] = (p / p.sum()) @ v[bi, keys, kv]
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  jax_ref = jax.nn.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=mask, scale=h ** -0.5)
  np.testing.assert_allclose(ours, np.asarray(jax_ref), atol=1e-5)


def test_causal_blocked_attention_equals_full_on_real_rows():
  """Query blocks that skip the keys after their block: the same rows as the full causal attention."""
  b, t, n, kvh, h = 2, 10, 4, 2, 8
  r = np.random.default_rng(1)
  q = jnp.asarray(r.normal(size=(b, t, n, h)).astype(np.float32))
  k, v = (jnp.asarray(r.normal(size=(b, t, kvh, h)).astype(np.float32)) for _ in range(2))
  kv_mask = np.ones((b, t), bool)
  kv_mask[0, :3] = False
  mask = attention_mask(jnp.asarray(kv_mask), t, None)
  full = np.asarray(head_major_attention(q, k, v, mask, scale=h ** -0.5))
  for block in (3, 4, 10, 16):   # uneven last block, one block, T <= block
    blocked = np.asarray(causal_blocked_attention(q, k, v, mask, h ** -0.5, block=block))
    np.testing.assert_allclose(blocked[kv_mask], full[kv_mask], atol=1e-6)


def test_grouped_query_attention_with_per_head_bias_and_dropout_against_numpy():
  """G = 3 query heads per kv head, a per-head bias and dropout: the mask is drawn over
  [B, N, T, S]'s flat index, as for the encoders."""
  b, t, s, n, kvh, h = 2, 4, 6, 6, 2, 8
  r = np.random.default_rng(3)
  q = r.normal(size=(b, t, n, h)).astype(np.float32)
  k, v = (r.normal(size=(b, s, kvh, h)).astype(np.float32) for _ in range(2))
  bias = r.normal(size=(1, n, t, s)).astype(np.float32)
  mask = r.random((b, 1, t, s)) > 0.3
  mask[..., 0] = True
  rng = jax.random.key(11)
  ours = np.asarray(head_major_attention(*(jnp.asarray(x) for x in (q, k, v, mask, bias)),
                                         dropout_rate=0.25, dropout_rng=rng))
  keep = np.asarray(keep_mask(rng, 0.75, (b, n, t, s)))
  np.testing.assert_allclose(ours, _numpy_attention(q, k, v, mask, bias, keep, 0.25), atol=1e-5)
  no_drop = head_major_attention(*(jnp.asarray(x) for x in (q, k, v, mask, bias)))
  jax_ref = jax.nn.dot_product_attention(*(jnp.asarray(x) for x in (q, k, v)), bias=jnp.asarray(bias),
                                         mask=jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(no_drop), np.asarray(jax_ref), atol=1e-5)
