"""Softmax attention written out head-major: what the encoders and the decoder run on CPU.

XLA:CPU's batched dots run about twice as fast on the head-major layout [B, N, T, H] as on
the [B, T, N, H] an einsum over the projections' layout gives, and the mask, bias, softmax
and dropout fuse around them. Grouped-query attention (K kv heads, N = K * G query heads) is
the same computation with the G query heads of a kv head stacked into one matmul of G*T rows;
the encoders are the G = 1 case.

Off CPU, `fused_attention` runs `jax.nn.dot_product_attention` with the implementation a model's
config resolved ("cudnn" | "xla", `qgjax.parallel.backend.resolve_attention`); a call cuDNN's
fused kernel cannot take (`cudnn_fits`) runs on XLA instead of failing.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qgjax.models.dropout import dropout
from qgjax.parallel.backend import cudnn_max_head_dim

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


def cudnn_fits(q_shape: tuple[int, ...], k_shape: tuple[int, ...], dtype, *, masked: bool, has_bias: bool,
               max_head_dim: int, split: bool = False) -> bool:
  """Whether `jax.nn.dot_product_attention(implementation="cudnn")` takes a call (jax 0.10's checks,
  jax/_src/cudnn/fused_attention_stablehlo.py). q [B, T, N, H], k [B, S, K, H].

  Its bf16/f16 flash kernel needs: q/k/v in bf16 or f16; H a multiple of 8 and <= `max_head_dim`
  (`cudnn_max_head_dim()`: 0 = no usable cuDNN); N a multiple of K. A mask becomes an additive
  bias, and a biased call's backward pass needs even T and S: masked calls with an odd length are
  refused (whether a call will be differentiated is not known where it is made). A learned bias
  (T5's relative positions) is refused too: cuDNN's bias gradient is not for a bias of every
  shape, so it stays on the XLA path, whose gradient is exact. `split`: the mesh in context
  shards the heads or the length axis, which cuDNN's partitioner refuses (`mesh_splits_attention`).
  """
  _, t, n, h = q_shape
  s, kv_heads = k_shape[1], k_shape[2]
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return False
  if h % 8 or h > max_head_dim or n % kv_heads:
    return False
  if has_bias or split:
    return False
  return not (masked and (t % 2 or s % 2))


def mesh_splits_attention() -> bool:
  """Whether the mesh and logical rules in context (`qgjax.parallel.sharding.activate`) split the
  "heads", "kv_heads" or "length" axis over more than one device (tensor parallelism does)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return False
  sizes = dict(mesh.shape)
  for axes in nn.logical_to_mesh_axes(("heads", "kv_heads", "length")):
    names = axes if isinstance(axes, tuple) else (axes,)
    if any(name is not None and sizes.get(name, 1) > 1 for name in names):
      return True
  return False


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                    bias: jax.Array | None = None, scale: float | None = None, *, impl: str = "xla") -> jax.Array:
  """`jax.nn.dot_product_attention` with implementation `impl` ("cudnn" | "xla"): q [B, T, N, H],
  k/v [B, S, K, H], mask bool broadcastable to [B, N, T, S], bias broadcastable to [B, N, T, S]
  -> [B, T, N, H]. "cudnn" where `cudnn_fits` the call (the mask then broadcast to [B, 1, T, S]:
  the kernel wants a bias of the full T x S), "xla" otherwise."""
  if bias is not None:
    bias = bias.astype(q.dtype)
  if impl == "cudnn" and cudnn_fits(q.shape, k.shape, q.dtype, masked=mask is not None, has_bias=bias is not None,
                                    max_head_dim=cudnn_max_head_dim(), split=mesh_splits_attention()):
    if mask is not None:
      m = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
      mask = jnp.broadcast_to(m, (q.shape[0], m.shape[1], q.shape[1], k.shape[1]))
    return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), bias=bias, mask=mask, scale=scale,
                                        implementation="cudnn")
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation="xla")
