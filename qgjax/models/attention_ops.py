"""Softmax attention written out head-major: what the encoders and the decoder run on CPU.

XLA:CPU's batched dots run about twice as fast on the head-major layout [B, N, T, H] as on
the [B, T, N, H] an einsum over the projections' layout gives, and the mask, bias, softmax
and dropout fuse around them. Grouped-query attention (K kv heads, N = K * G query heads) is
the same computation with the G query heads of a kv head stacked into one matmul of G*T rows;
the encoders are the G = 1 case.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from qgjax.models.dropout import dropout

CAUSAL_BLOCK = 64   # query block of `causal_blocked_attention`


def _grouped(x: jax.Array, kv_heads: int, groups: int) -> jax.Array:
  """An array broadcastable to [B, N, T, S] -> broadcastable to [B, K, G, T, S]."""
  x = x.reshape((1,) * (4 - x.ndim) + x.shape)
  if x.shape[1] == 1:
    return x[:, :, None]
  return x.reshape(x.shape[0], kv_heads, groups, x.shape[2], x.shape[3])


def head_major_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                         bias: jax.Array | None = None, scale: float | None = None, *,
                         dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None) -> jax.Array:
  """Softmax attention. q [B, T, N, H], k/v [B, S, K, H] with N = K * G -> [B, T, N, H].

  mask bool broadcastable to [B, N, T, S] (True = attend); bias f32 broadcastable to
  [B, N, T, S]; scale defaults to 1/sqrt(H). Logits and softmax run in f32; a fully masked
  row gives the mean of v (as `jax.nn.dot_product_attention`). With `dropout_rate` > 0 and
  a `dropout_rng` the probabilities are dropped out (hashed mask over [B, K, G, T, S], whose
  flat index is that of [B, N, T, S]).
  """
  b, t, n, h = q.shape
  s, kvh = k.shape[1], k.shape[2]
  g = n // kvh
  scale = 1.0 / np.sqrt(h) if scale is None else scale
  qh = jnp.transpose(q.reshape(b, t, kvh, g, h), (0, 2, 3, 1, 4)).reshape(b, kvh, g * t, h)
  logits = jnp.matmul(qh, jnp.transpose(k, (0, 2, 3, 1)), preferred_element_type=jnp.float32) * scale
  logits = logits.reshape(b, kvh, g, t, s)
  if bias is not None:
    logits = logits + _grouped(bias, kvh, g).astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(_grouped(mask, kvh, g), logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  if dropout_rate > 0.0 and dropout_rng is not None:
    probs = dropout(probs, dropout_rate, dropout_rng)
  probs = probs.astype(v.dtype).reshape(b, kvh, g * t, s)
  out = jnp.matmul(probs, jnp.transpose(v, (0, 2, 1, 3)))                          # [B, K, G*T, H]
  return jnp.transpose(out.reshape(b, kvh, g, t, h), (0, 3, 1, 2, 4)).reshape(b, t, n, h)


def causal_blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                             scale: float | None = None, block: int = CAUSAL_BLOCK) -> jax.Array:
  """`head_major_attention` for causal self-attention (S == T, mask [B, 1|N, T, T] already
  causal): query block [i, i + block) attends only to keys [0, i + block), so the scores above
  the diagonal are mostly never computed (4 blocks of 64 at T = 256: 62.5% of them).

  Rows of real tokens are exactly `head_major_attention`'s; a fully masked row (a left-pad
  position, which no real token reads) gets the mean of v over its block's keys instead.
  """
  t = q.shape[1]
  if t <= block:
    return head_major_attention(q, k, v, mask, scale=scale)
  outs = []
  for start in range(0, t, block):
    end = min(start + block, t)
    outs.append(head_major_attention(q[:, start:end], k[:, :end], v[:, :end], mask[..., start:end, :end],
                                     scale=scale))
  return jnp.concatenate(outs, axis=1)
