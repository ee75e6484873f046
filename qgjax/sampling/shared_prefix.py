"""Decode steps that attend to ONE shared copy of each prompt's KV cache (no per-sample copies).

The n samples (or beams) of a prompt share its keys/values: the prompt cache is stored once per
prompt and only the new tokens live in a per-row cache. Attention for a decode step is
  softmax([q . K_prompt(b) ; q . K_new(row)]) @ [V_prompt(b) ; V_new(row)]
and the prompt part is ONE matmul per (prompt, kv head) for all n samples x query heads of
the group, so the prompt cache is read once per prompt, not once per sample.

Layout (one array per layer, so no layer is ever sliced out of a stacked cache; keys stored
transposed so both attention products are plain [M, K] x [K, N] matmuls):
  PromptCache.k[l]  [B, KVH, Dh, P]      PromptCache.v[l]  [B, KVH, P, Dh]     mask bool[B, P]
  new.k[l]          [R, KVH, Dh, N]      new.v[l]          [R, KVH, N, Dh]     R = B * n

The decoder's own modules (embeddings, norms, projections, MLP, LM head) run unchanged:
`DecoderLM` is applied as usual with its layers unrolled (`unrolled(model, params)` converts a
scanned model), and only each layer's attention is replaced, through flax's method
interception, by `_attend_shared_prefix`, which reads the layer's q/k/v/o projection
parameters (`q_proj`, ..., `o_proj`: kernel [in, out], optional bias).

  model, params = unrolled(model, params)
  prompt = PromptCache.from_prefill(cache, mask)          # after `decoder.prefill`
  new = init_new_cache(model.config, R, N)
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


def unrolled(model: DecoderLM, params: Any) -> tuple[DecoderLM, Any]:
  """A scanned DecoderLM and its params -> the same model with layers_0..layers_{L-1} (no copy
  of anything but the per-layer slices; identity when the model is already unrolled)."""
  c = model.config
  if not c.scan_layers:
    return model, params
  out = {k: v for k, v in params.items() if k != "layers"}
  for i in range(c.num_layers):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
  return DecoderLM(c.replace(scan_layers=False)), out


class PromptCache(NamedTuple):
  """Per-layer tuples: k[l] [B, KVH, Dh, P], v[l] [B, KVH, P, Dh]; mask bool[B, P] (True = real token)."""
  k: tuple
  v: tuple
  mask: jax.Array

  @classmethod
  def from_prefill(cls, cache: KVCache, mask: jax.Array) -> "PromptCache":
    """A prefill cache [L, B, P, KVH, Dh] -> the per-layer layout (one transpose, once)."""
    layers = cache.k.shape[0]
    k = tuple(jnp.transpose(cache.k[i], (0, 2, 3, 1)) for i in range(layers))
    v = tuple(jnp.transpose(cache.v[i], (0, 2, 1, 3)) for i in range(layers))
    return cls(k, v, mask.astype(bool))


def init_new_cache(config, rows: int, max_new: int, dtype: Any = None) -> KVCache:
  """Zero per-layer caches for the new tokens: k[l] [rows, KVH, Dh, max_new], v[l] [rows, KVH, max_new, Dh]."""
  dt = as_dtype(dtype or config.dtype)
  kvh, dh = config.num_kv_heads, config.head_dim
  k = tuple(jnp.zeros((rows, kvh, dh, max_new), dt) for _ in range(config.num_layers))
  v = tuple(jnp.zeros((rows, kvh, max_new, dh), dt) for _ in range(config.num_layers))
  return KVCache(k=k, v=v)


def gather_rows(cache: KVCache, rows: jax.Array) -> KVCache:
  """Reorders the rows of a new-token cache (beam search)."""
  take = lambda x: jnp.take(x, rows, axis=0)
  return KVCache(k=tuple(map(take, cache.k)), v=tuple(map(take, cache.v)))


def _project(params: dict, name: str, x: jax.Array, dtype) -> jax.Array:
  p = params[name]
  y = jnp.dot(x.astype(dtype), p["kernel"].astype(dtype))
  if "bias" in p:
    y = y + p["bias"].astype(dtype)
  return y


def _attend_shared_prefix(module: Attention, prompt: PromptCache, x, cos, sin, new_k, new_v, layer, t):
  """One layer's attention for one new token per row. x [R, 1, D]; new_k/new_v: the per-layer tuples."""
  c = module.config
  dt = as_dtype(c.dtype)
  params = module.variables["params"]
  rows = x.shape[0]
  b = prompt.mask.shape[0]
  n = rows // b
  kvh, g, dh = c.num_kv_heads, c.num_heads // c.num_kv_heads, c.head_dim
  q = apply_rope(_project(params, "q_proj", x, dt).reshape(rows, 1, c.num_heads, dh), cos, sin)
  k = apply_rope(_project(params, "k_proj", x, dt).reshape(rows, 1, kvh, dh), cos, sin)
  v = _project(params, "v_proj", x, dt).reshape(rows, 1, kvh, dh)
  sk, sv = new_k[layer], new_v[layer]                                    # [R, KVH, Dh, N], [R, KVH, N, Dh]
  t = jnp.asarray(t, jnp.int32)
  zero = jnp.zeros((), jnp.int32)
  sk = jax.lax.dynamic_update_slice(sk, jnp.transpose(k, (0, 2, 3, 1)).astype(sk.dtype), (zero, zero, zero, t))
  sv = jax.lax.dynamic_update_slice(sv, jnp.transpose(v, (0, 2, 1, 3)).astype(sv.dtype), (zero, zero, t, zero))
  new_k = new_k[:layer] + (sk,) + new_k[layer + 1:]
  new_v = new_v[:layer] + (sv,) + new_v[layer + 1:]
  pk, pv = prompt.k[layer].astype(dt), prompt.v[layer].astype(dt)       # [B, KVH, Dh, P], [B, KVH, P, Dh]
  scale = dh ** -0.5
  # Prompt part: the n samples x g heads of a kv head share one matmul against the prompt keys.
  qp = jnp.transpose(q.reshape(b, n, kvh, g, dh), (0, 2, 1, 3, 4)).reshape(b, kvh, n * g, dh) * scale
  s_pre = jnp.einsum("bkmd,bkdp->bkmp", qp, pk, preferred_element_type=jnp.float32)
  s_pre = jnp.where(prompt.mask[:, None, None, :], s_pre, NEG)
  # New-token part: each row against its own keys, slots <= t.
  qs = q.reshape(rows, kvh, g, dh) * scale
  s_new = jnp.einsum("rkgd,rkdn->rkgn", qs, sk.astype(dt), preferred_element_type=jnp.float32)
  s_new = jnp.where(jnp.arange(sk.shape[-1])[None, None, None, :] <= t, s_new, NEG)
  m_pre = jnp.transpose(s_pre.max(-1).reshape(b, kvh, n, g), (0, 2, 1, 3)).reshape(rows, kvh, g)
  m = jnp.maximum(m_pre, s_new.max(-1))                                  # [R, KVH, G]
  m_rows = jnp.transpose(m.reshape(b, n, kvh, g), (0, 2, 1, 3)).reshape(b, kvh, n * g, 1)
  e_pre = jnp.exp(s_pre - m_rows)
  e_new = jnp.exp(s_new - m[..., None])
  o_pre = jnp.einsum("bkmp,bkpd->bkmd", e_pre.astype(dt), pv, preferred_element_type=jnp.float32)
  o_new = jnp.einsum("rkgn,rknd->rkgd", e_new.astype(dt), sv.astype(dt), preferred_element_type=jnp.float32)
  to_rows = lambda a: jnp.transpose(a.reshape(b, kvh, n, g, -1), (0, 2, 1, 3, 4)).reshape(rows, kvh, g, -1)
  denom = to_rows(e_pre.sum(-1, keepdims=True)) + e_new.sum(-1, keepdims=True)
  out = (to_rows(o_pre) + o_new) / denom                                 # [R, KVH, G, Dh]
  out = _project(params, "o_proj", out.reshape(rows, 1, c.num_heads * dh).astype(dt), dt)
  return out, new_k, new_v


def decode_step(model: DecoderLM, params: Any, prompt: PromptCache, new: KVCache, tokens: jax.Array,
                positions: jax.Array, t: jax.Array) -> tuple[jax.Array, KVCache]:
  """Feeds one token per row (new token index t) to an unrolled DecoderLM.

  tokens/positions int32[R] -> (logits f32[R, V], new cache).
  """
  if model.config.scan_layers:
    raise ValueError("decode_step needs an unrolled model: use unrolled(model, params)")

  def intercept(next_fun, args, kwargs, context):
    if isinstance(context.module, Attention) and context.method_name == "__call__":
      x, cos, sin, _mask, cache_k, cache_v, layer_idx, cache_index = args
      return _attend_shared_prefix(context.module, prompt, x, cos, sin, cache_k, cache_v, int(layer_idx), cache_index)
    return next_fun(*args, **kwargs)

  rows = tokens.shape[0]
  kv_mask = jnp.ones((rows, new.k[0].shape[-1]), bool)  # unused by the replaced attention
  with nn.intercept_methods(intercept):
    logits, new = model.apply({"params": params}, tokens[:, None], positions[:, None], kv_mask, new, t)
  return logits[:, 0], new
