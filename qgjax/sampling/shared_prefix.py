"""Decode steps that attend to ONE shared copy of each prompt's KV cache (no per-sample copies).

n samples of a prompt share the prompt's keys/values: the prompt cache is stored once per
prompt, `[L, B, KVH, P, Dh]`, and only the new tokens live in a per-row cache
`[L, B * n, KVH, N, Dh]`. Attention for a decode step is then
  softmax([q . K_prompt(b) ; q . K_new(row)]) @ [V_prompt(b) ; V_new(row)]
computed with both dot products in the layout the CPU/GPU matmul wants (batch dims leading),
so no transposed or repeated copy of the cache is made per step, and the prompt cache is read
once per prompt rather than once per sample.

The decoder's own modules (embeddings, norms, projections, MLP, the layer scan, the LM head)
run unchanged: `DecoderLM` is applied as usual and only the attention of each layer is
replaced, through flax's method interception, by `_attend_shared_prefix` below, which reads
the layer's q/k/v/o projection parameters (`q_proj`, ..., `o_proj`; kernel [in, out], optional
bias) from the layer.

  prompt = PromptCache.from_prefill(cache, mask)          # after `decoder.prefill`
  logits, new = decode_step(model, params, prompt, new, tokens int32[R], positions int32[R], t)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from qgjax.models.decoder import Attention, DecoderLM, KVCache
from qgjax.models.layers import apply_rope, as_dtype

NEG = -1e30


class PromptCache(NamedTuple):
  """k, v [L, B, KVH, P, Dh]; mask bool[B, P] (True = real prompt token)."""
  k: jax.Array
  v: jax.Array
  mask: jax.Array

  @classmethod
  def from_prefill(cls, cache: KVCache, mask: jax.Array) -> "PromptCache":
    """A prefill cache [L, B, P, KVH, Dh] -> the per-prompt layout (one transpose, once)."""
    t = lambda x: jnp.transpose(x, (0, 1, 3, 2, 4))
    return cls(t(cache.k), t(cache.v), mask.astype(bool))


def init_new_cache(config, rows: int, max_new: int, dtype: Any = None) -> KVCache:
  """Zero cache for the new tokens of every row: k, v [L, rows, KVH, max_new, Dh]."""
  shape = (config.num_layers, rows, config.num_kv_heads, max_new, config.head_dim)
  dt = as_dtype(dtype or config.dtype)
  return KVCache(k=jnp.zeros(shape, dt), v=jnp.zeros(shape, dt))


def _project(params: dict, name: str, x: jax.Array, dtype) -> jax.Array:
  p = params[name]
  y = jnp.dot(x.astype(dtype), p["kernel"].astype(dtype))
  if "bias" in p:
    y = y + p["bias"].astype(dtype)
  return y


def _attend_shared_prefix(module: Attention, prompt: PromptCache, x, cos, sin, new_k, new_v, layer_idx, t):
  """One layer's attention for one new token per row. x [R, 1, D]; new_k/new_v [L, R, KVH, N, Dh]."""
  c = module.config
  dt = as_dtype(c.dtype)
  params = module.variables["params"]
  rows = x.shape[0]
  b = prompt.k.shape[1]
  n = rows // b
  kvh, g, dh = c.num_kv_heads, c.num_heads // c.num_kv_heads, c.head_dim
  q = apply_rope(_project(params, "q_proj", x, dt).reshape(rows, 1, c.num_heads, dh), cos, sin)
  k = apply_rope(_project(params, "k_proj", x, dt).reshape(rows, 1, kvh, dh), cos, sin)
  v = _project(params, "v_proj", x, dt).reshape(rows, 1, kvh, dh)
  # Write this token's key/value at slot t of the layer's new-token cache: [1, R, KVH, 1, Dh].
  zero = jnp.zeros((), jnp.int32)
  idx = (jnp.asarray(layer_idx, jnp.int32), zero, zero, jnp.asarray(t, jnp.int32), zero)
  to_cache = lambda a, ref: jnp.transpose(a, (0, 2, 1, 3))[None].astype(ref.dtype)
  new_k = jax.lax.dynamic_update_slice(new_k, to_cache(k, new_k), idx)
  new_v = jax.lax.dynamic_update_slice(new_v, to_cache(v, new_v), idx)
  layer = idx[0]
  pk = jax.lax.dynamic_index_in_dim(prompt.k, layer, 0, keepdims=False).astype(dt)   # [B, KVH, P, Dh]
  pv = jax.lax.dynamic_index_in_dim(prompt.v, layer, 0, keepdims=False).astype(dt)
  sk = jax.lax.dynamic_index_in_dim(new_k, layer, 0, keepdims=False).astype(dt)      # [R, KVH, N, Dh]
  sv = jax.lax.dynamic_index_in_dim(new_v, layer, 0, keepdims=False).astype(dt)
  scale = dh ** -0.5
  # Prompt part: the n samples x g heads of a kv head share one matmul against the prompt keys.
  qp = jnp.transpose(q.reshape(b, n, kvh, g, dh), (0, 2, 1, 3, 4)).reshape(b, kvh, n * g, dh)
  s_pre = jnp.einsum("bkmd,bkpd->bkmp", qp, pk, preferred_element_type=jnp.float32) * scale
  s_pre = jnp.where(prompt.mask[:, None, None, :], s_pre, NEG)
  # New-token part: each row against its own keys, slots <= t.
  qs = q.reshape(rows, kvh, g, dh)
  s_new = jnp.einsum("rkgd,rknd->rkgn", qs, sk, preferred_element_type=jnp.float32) * scale
  s_new = jnp.where(jnp.arange(sk.shape[2])[None, None, None, :] <= t, s_new, NEG)
  s_new = jnp.transpose(s_new.reshape(b, n, kvh, g, -1), (0, 2, 1, 3, 4)).reshape(b, kvh, n * g, -1)
  m = jnp.maximum(s_pre.max(-1, keepdims=True), s_new.max(-1, keepdims=True))
  e_pre, e_new = jnp.exp(s_pre - m), jnp.exp(s_new - m)
  denom = e_pre.sum(-1, keepdims=True) + e_new.sum(-1, keepdims=True)
  o_pre = jnp.einsum("bkmp,bkpd->bkmd", e_pre.astype(dt), pv, preferred_element_type=jnp.float32)
  e_new_rows = jnp.transpose(e_new.reshape(b, kvh, n, g, -1), (0, 2, 1, 3, 4)).reshape(rows, kvh, g, -1)
  o_new = jnp.einsum("rkgn,rknd->rkgd", e_new_rows.astype(dt), sv, preferred_element_type=jnp.float32)
  o_new = jnp.transpose(o_new.reshape(b, n, kvh, g, dh), (0, 2, 1, 3, 4)).reshape(b, kvh, n * g, dh)
  out = (o_pre + o_new) / denom                                                    # [B, KVH, n*g, Dh]
  out = jnp.transpose(out.reshape(b, kvh, n, g, dh), (0, 2, 1, 3, 4)).reshape(rows, 1, c.num_heads * dh)
  out = _project(params, "o_proj", out.astype(dt), dt)
  return out, new_k, new_v


def decode_step(model: DecoderLM, params: Any, prompt: PromptCache, new: KVCache, tokens: jax.Array,
                positions: jax.Array, t: jax.Array) -> tuple[jax.Array, KVCache]:
  """Feeds one token per row (new token index t). tokens/positions int32[R] -> (logits f32[R, V], new)."""

  def intercept(next_fun, args, kwargs, context):
    if isinstance(context.module, Attention) and context.method_name == "__call__":
      x, cos, sin, _mask, cache_k, cache_v, layer_idx, cache_index = args
      return _attend_shared_prefix(context.module, prompt, x, cos, sin, cache_k, cache_v, layer_idx, cache_index)
    return next_fun(*args, **kwargs)

  rows = tokens.shape[0]
  kv_mask = jnp.ones((rows, new.k.shape[3]), bool)  # unused by the replaced attention
  with nn.intercept_methods(intercept):
    logits, new = model.apply({"params": params}, tokens[:, None], positions[:, None], kv_mask, new, t)
  return logits[:, 0], new
