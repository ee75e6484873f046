"""The shared-prompt cache layout: ONE copy of each prompt's keys/values for its n samples (or beams).

The prompt cache is stored once per prompt and only the new tokens live in a per-row cache.
Attention for a decode step (one new token per row) is
  softmax([q . K_prompt(b) ; q . K_new(row)]) @ [V_prompt(b) ; V_new(row)]
and the prompt part is ONE matmul per (prompt, kv head) for all n samples x query heads of the
group, so the prompt cache is read once per prompt, not once per sample. Rows are
prompt-major: row b * n + i is sample i of prompt b.

Layout (one array per layer, so no layer is ever sliced out of a stacked cache; keys stored
transposed so both attention products are plain [M, K] x [K, N] matmuls):
  PromptCache.k[l]  [B, KVH, Dh, P]      PromptCache.v[l]  [B, KVH, P, Dh]     mask bool[B, P]
  SampleCache.k[l]  [R, KVH, Dh, N]      SampleCache.v[l]  [R, KVH, N, Dh]     R = B * n

`DecoderLM.decode_shared_prompt` (qgjax.models.decoder) runs a decode step in this layout;
`shared_prompt_attention` is one layer's attention after the q/k/v projections. Under a mesh and
logical rules (qgjax.parallel.sharding.activate) `constrain_cache` splits both caches' rows over
"batch" and their kv heads over "kv_heads" (K_AXES / V_AXES); outside one it does nothing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from qgjax.models.layers import as_dtype, logical_constraint

NEG = -1e30   # score of a masked key (finite: a fully masked prompt row still normalises)
K_AXES = ("batch", "kv_heads", "head_dim", "length")   # logical axes of a (prompt or sample) key cache
V_AXES = ("batch", "kv_heads", "length", "head_dim")   # ... and of a value cache


class PromptCache(NamedTuple):
  """Per-layer tuples: k[l] [B, KVH, Dh, P], v[l] [B, KVH, P, Dh]; mask bool[B, P] (True = real token)."""
  k: tuple
  v: tuple
  mask: jax.Array

  @classmethod
  def from_prefill(cls, cache: Any, mask: jax.Array) -> "PromptCache":
    """A prefill KVCache (k, v [L, B, P, KVH, Dh]) -> the per-layer layout (one transpose, once)."""
    layers = cache.k.shape[0]
    k = tuple(jnp.transpose(cache.k[i], (0, 2, 3, 1)) for i in range(layers))
    v = tuple(jnp.transpose(cache.v[i], (0, 2, 1, 3)) for i in range(layers))
    return cls(k, v, mask.astype(bool))


class SampleCache(NamedTuple):
  """The new tokens' keys/values, per-layer tuples: k[l] [R, KVH, Dh, N], v[l] [R, KVH, N, Dh]."""
  k: tuple
  v: tuple


def init_sample_cache(config: Any, rows: int, max_new: int, dtype: Any = None) -> SampleCache:
  """Zero per-layer caches for `max_new` new tokens of `rows` rows (dtype defaults to config.dtype)."""
  dt = as_dtype(dtype or config.dtype)
  kvh, dh = config.num_kv_heads, config.head_dim
  k = tuple(jnp.zeros((rows, kvh, dh, max_new), dt) for _ in range(config.num_layers))
  v = tuple(jnp.zeros((rows, kvh, max_new, dh), dt) for _ in range(config.num_layers))
  return SampleCache(k=k, v=v)


def constrain_cache(cache: Any) -> Any:
  """A PromptCache or SampleCache with sharding constraints K_AXES / V_AXES (mask: "batch") on its
  arrays; a no-op outside a mesh + logical rules context."""
  k = tuple(logical_constraint(x, K_AXES) for x in cache.k)
  v = tuple(logical_constraint(x, V_AXES) for x in cache.v)
  if isinstance(cache, PromptCache):
    return PromptCache(k, v, logical_constraint(cache.mask, ("batch", "length")))
  return SampleCache(k, v)


def gather_rows(cache: SampleCache, rows: jax.Array) -> SampleCache:
  """Reorders the rows of a sample cache (beam search): row r <- row rows[r]."""
  take = lambda x: jnp.take(x, rows, axis=0)
  return SampleCache(k=tuple(map(take, cache.k)), v=tuple(map(take, cache.v)))


def shared_prompt_attention(q: jax.Array, k: jax.Array, v: jax.Array, prompt_k: jax.Array, prompt_v: jax.Array,
                            prompt_mask: jax.Array, new_k: jax.Array, new_v: jax.Array,
                            t: jax.Array | int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One layer's attention for one new token per row, after RoPE.

  q [R, 1, N, Dh], k/v [R, 1, KVH, Dh] (the new token t); prompt_k [B, KVH, Dh, P], prompt_v
  [B, KVH, P, Dh], prompt_mask bool[B, P]; new_k [R, KVH, Dh, Nmax], new_v [R, KVH, Nmax, Dh]
  (this layer's sample cache). Writes k/v into slot t, attends to the prompt and to new slots
  <= t. Returns (out [R, KVH, G, Dh] in f32, new_k, new_v); the compute dtype is q's.
  """
  dt = q.dtype
  rows, _, heads, dh = q.shape
  kvh = k.shape[2]
  g = heads // kvh
  b = prompt_mask.shape[0]
  n = rows // b
  t = jnp.asarray(t, jnp.int32)
  zero = jnp.zeros((), jnp.int32)
  new_k = jax.lax.dynamic_update_slice(new_k, jnp.transpose(k, (0, 2, 3, 1)).astype(new_k.dtype), (zero, zero, zero, t))
  new_v = jax.lax.dynamic_update_slice(new_v, jnp.transpose(v, (0, 2, 1, 3)).astype(new_v.dtype), (zero, zero, t, zero))
  pk, pv = prompt_k.astype(dt), prompt_v.astype(dt)
  scale = dh ** -0.5
  # Prompt part: the n samples x g heads of a kv head share one matmul against the prompt keys.
  qp = jnp.transpose(q.reshape(b, n, kvh, g, dh), (0, 2, 1, 3, 4)).reshape(b, kvh, n * g, dh) * scale
  s_pre = jnp.einsum("bkmd,bkdp->bkmp", qp, pk, preferred_element_type=jnp.float32)
  s_pre = jnp.where(prompt_mask[:, None, None, :], s_pre, NEG)
  # New-token part: each row against its own keys, slots <= t.
  qs = q.reshape(rows, kvh, g, dh) * scale
  s_new = jnp.einsum("rkgd,rkdn->rkgn", qs, new_k.astype(dt), preferred_element_type=jnp.float32)
  s_new = jnp.where(jnp.arange(new_k.shape[-1])[None, None, None, :] <= t, s_new, NEG)
  m_pre = jnp.transpose(s_pre.max(-1).reshape(b, kvh, n, g), (0, 2, 1, 3)).reshape(rows, kvh, g)
  m = jnp.maximum(m_pre, s_new.max(-1))                                  # [R, KVH, G]
  m_rows = jnp.transpose(m.reshape(b, n, kvh, g), (0, 2, 1, 3)).reshape(b, kvh, n * g, 1)
  e_pre = jnp.exp(s_pre - m_rows)
  e_new = jnp.exp(s_new - m[..., None])
  o_pre = jnp.einsum("bkmp,bkpd->bkmd", e_pre.astype(dt), pv, preferred_element_type=jnp.float32)
  o_new = jnp.einsum("rkgn,rknd->rkgd", e_new.astype(dt), new_v.astype(dt), preferred_element_type=jnp.float32)
  to_rows = lambda a: jnp.transpose(a.reshape(b, kvh, n, g, -1), (0, 2, 1, 3, 4)).reshape(rows, kvh, g, -1)
  denom = to_rows(e_pre.sum(-1, keepdims=True)) + e_new.sum(-1, keepdims=True)
  return (to_rows(o_pre) + o_new) / denom, new_k, new_v
