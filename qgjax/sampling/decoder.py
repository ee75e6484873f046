"""Sampling from decoder-only LMs (qgjax.models.decoder.DecoderLM): prefill once, decode in a loop.

Each prompt is prefilled ONCE and its n samples (or beams) decode against that one copy of its
KV cache (the model's own shared-prompt mode, `DecoderLM.decode_shared_prompt` over the layout
of qgjax.models.shared_prompt; HF `generate` copies the prompt n times and prefills and caches
every copy). Only the last prompt position goes through the LM head during the prefill.

  generate_decoder(model, params, tokens int32[B, P], mask bool[B, P], keys[B], sampling)
      -> Samples with R = B * num_samples rows (prompt-major)

Prompts are left-padded (mask False on the left); positions are cumsum(mask) - 1. The cache
holds P + max_new_tokens slots: the prompt at [0, P), new token t at P + t.

A token prefix common to every prompt (`prefix_tokens` int32[Pp]: a few-shot prompt's chat opening,
examples and instruction) is prefilled once per batch and each prompt's rest attends to it: the
prompt cache holds Pp + P slots and only B x P tokens go through the model (`prefill`'s `prefix`).

Soft prompts (ReadQG): `prefix` f32[B, K, D] goes before each prompt's embeddings
([prefix ; pad ; prompt], qgjax.models.soft_prompt.prepend), always attended; the prefill then
runs on embeddings and the decode is unchanged (the prompt is K + P slots).

Traced under a mesh and logical rules (qgjax.parallel.sharding.activate, as the Sampler does for a
mesh with "fsdp" / "tensor" axes) the KV caches carry sharding constraints: rows over "batch",
kv heads over "kv_heads" (KV_CACHE_AXES, shared_prompt.K_AXES / V_AXES). Outside one they are no-ops.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from qgjax.models.decoder import KV_CACHE_AXES, DecoderLM, KVCache, init_cache, positions_from_mask, unrolled
from qgjax.models.layers import as_dtype, logical_constraint
from qgjax.models.shared_prompt import PromptCache, constrain_cache, gather_rows, init_sample_cache
from qgjax.sampling.beam import beam_loop
from qgjax.sampling.keys import sample_keys
from qgjax.sampling.logits import SamplingParams
from qgjax.sampling.loop import Samples, sample_loop


def prefill(model: DecoderLM, params: Any, tokens: jax.Array | None, mask: jax.Array,
            cache_len: int | None = None, embeds: jax.Array | None = None,
            prefix: KVCache | None = None) -> tuple[jax.Array, KVCache]:
  """Runs the prompt through the model. tokens int32[B, P] left-padded, mask bool[B, P];
  embeds [B, P, D] (then tokens may be None) replaces the token embeddings.

  prefix: the cache of a token prefix common to every prompt (k, v [L, 1, Pp, KVH, Dh], from a
  prefill of the prefix alone): the prompts are then the rest after it and attend to it, at
  positions Pp + cumsum(mask) - 1, so only the B x P tokens after the prefix are computed.

  Returns (logits f32[B, V] for the next token, cache with `cache_len` (default Pp + P) slots: the
  prefix in [0, Pp), the prompt in [Pp, Pp + P)). The LM head runs on the last position only.
  """
  b, p = mask.shape
  pp = 0 if prefix is None else prefix.k.shape[2]
  full = p + pp if cache_len is None else cache_len
  cache = init_cache(model.config, b, full)
  if prefix is not None:   # every row starts with the one prefix; its slots are written once, here
    put = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, jnp.broadcast_to(
        x, x.shape[:1] + (b,) + x.shape[2:]).astype(buf.dtype), 0, 2)
    cache = KVCache(k=put(cache.k, prefix.k), v=put(cache.v, prefix.v))
  cache = KVCache(k=logical_constraint(cache.k, KV_CACHE_AXES), v=logical_constraint(cache.v, KV_CACHE_AXES))
  kv_mask = jnp.pad(jnp.pad(mask, ((0, 0), (pp, 0)), constant_values=True), ((0, 0), (0, full - pp - p)))
  positions = positions_from_mask(kv_mask[:, :pp + p])[:, pp:]
  logits, cache = model.apply({"params": params}, tokens, positions, kv_mask, cache, pp,
                              embeds=embeds, return_last_only=True)
  return logits[:, -1], cache


def prefix_cache(model: DecoderLM, params: Any, prefix_tokens: jax.Array) -> KVCache:
  """The cache of a token prefix shared by every prompt: int32[Pp] -> k, v [L, 1, Pp, KVH, Dh]."""
  tokens = prefix_tokens[None].astype(jnp.int32)
  _, cache = prefill(model, params, tokens, jnp.ones(tokens.shape, bool))
  return cache


def with_prefix(mask: jax.Array, prefix: KVCache | None) -> jax.Array:
  """bool[B, P] -> bool[B, Pp + P]: the prompt mask with the prefix's Pp slots (all real) before it."""
  return mask if prefix is None else jnp.pad(mask, ((0, 0), (prefix.k.shape[2], 0)), constant_values=True)


CPU_PREFILL_CHUNK_TOKENS = 1024   # prompt tokens per device per prefill chunk on CPU (cache-sized)


def prefill_chunk_count(batch: int, length: int, chunk_tokens: int, devices: int = 1) -> int:
  """How many sequential prefill groups to split `batch` prompts of `length` tokens into.

  Each group has G = batch / C prompts, G a multiple of `devices` (every device gets G / devices
  of them), and the fewest prompts with (G / devices) * length >= chunk_tokens. 1 (no split)
  when chunk_tokens <= 0 or no smaller group qualifies.
  """
  if chunk_tokens <= 0 or batch % devices:
    return 1
  for g in range(devices, batch, devices):
    if batch % g == 0 and (g // devices) * length >= chunk_tokens:
      return batch // g
  return 1


def prefill_prompt_cache(model: DecoderLM, params: Any, tokens: jax.Array | None, mask: jax.Array,
                         chunks: int = 1, embeds: jax.Array | None = None,
                         prefix: KVCache | None = None) -> tuple[jax.Array, PromptCache]:
  """`prefill` straight into the shared-prompt layout, `chunks` groups of prompts at a time.

  tokens int32[B, P] / mask bool[B, P] (embeds [B, P, D]) -> (logits f32[B, V], PromptCache of
  Pp + P slots, Pp = the `prefix` cache's length, 0 without one; see `prefill`).
  With chunks = C > 1 (C must divide B) a `fori_loop` prefills C groups of G = B / C prompts one
  after another; group c holds prompts c, C + c, 2C + c, ... so that a batch sharded over the
  devices keeps every device busy in every group. On CPU the activations of a group stay in
  cache (the MLP's matmuls run at about 200 instead of 140 GFLOP/s at 16k rows).
  """
  b, p = mask.shape
  if chunks <= 1:
    logits, cache = prefill(model, params, tokens, mask, embeds=embeds, prefix=prefix)
    return logits, PromptCache.from_prefill(cache, with_prefix(mask, prefix))
  if b % chunks:
    raise ValueError(f"prefill chunks={chunks} must divide the batch of {b} prompts")
  g = b // chunks
  strided = lambda x: x.reshape((g, chunks) + x.shape[1:])          # row g * C + c -> [g, c]
  tok_s = None if tokens is None else strided(tokens)
  emb_s = None if embeds is None else strided(embeds)
  mask_s = strided(mask)
  c = model.config
  dt = as_dtype(c.dtype)
  layers, kvh, dh = c.num_layers, c.num_kv_heads, c.head_dim
  full = p + (0 if prefix is None else prefix.k.shape[2])
  out_k = tuple(jnp.zeros((g, chunks, kvh, dh, full), dt) for _ in range(layers))
  out_v = tuple(jnp.zeros((g, chunks, kvh, full, dh), dt) for _ in range(layers))
  out_logits = jnp.zeros((g, chunks, c.vocab_size), jnp.float32)

  def body(i, carry):
    logits_all, ks, vs = carry
    take = lambda x: None if x is None else jax.lax.dynamic_index_in_dim(x, i, 1, keepdims=False)
    group_mask = take(mask_s)
    logits, cache = prefill(model, params, take(tok_s), group_mask, embeds=take(emb_s), prefix=prefix)
    part = PromptCache.from_prefill(cache, with_prefix(group_mask, prefix))
    put = lambda buf, x: jax.lax.dynamic_update_index_in_dim(buf, x.astype(buf.dtype), i, 1)
    return (put(logits_all, logits), tuple(map(put, ks, part.k)), tuple(map(put, vs, part.v)))

  out_logits, out_k, out_v = jax.lax.fori_loop(0, chunks, body, (out_logits, out_k, out_v))
  flat = lambda x: x.reshape((b,) + x.shape[2:])
  return flat(out_logits), PromptCache(tuple(map(flat, out_k)), tuple(map(flat, out_v)),
                                       with_prefix(mask, prefix).astype(bool))


def _grow(cache: KVCache, copies: int, extra: int) -> KVCache:
  """[L, B, P, ...] -> [L, B * copies, P + extra, ...]: each prompt's entries repeated, zeros after."""
  def grow(x):
    x = jnp.repeat(x, copies, axis=1) if copies > 1 else x
    return jnp.pad(x, ((0, 0), (0, 0), (0, extra), (0, 0), (0, 0)))
  return KVCache(k=grow(cache.k), v=grow(cache.v))


def generate_decoder(model: DecoderLM, params: Any, tokens: jax.Array, mask: jax.Array, keys: jax.Array | None,
                     sampling: SamplingParams, *, shared_prompt: bool = True,
                     prefix: jax.Array | None = None, prefill_chunk_tokens: int = 0,
                     devices: int = 1, prefix_tokens: jax.Array | None = None) -> Samples:
  """Samples (or beam-searches) continuations of B left-padded prompts; see the module docstring.

  keys: typed keys [B], one per prompt (from keys.prompt_keys); unused for greedy and beam search.
  shared_prompt: decode against one copy of each prompt's cache (DecoderLM.decode_shared_prompt); False
  broadcasts the cache to every sample and uses the model's own attention (the reference path).
  prefix: soft-prompt embeddings [B, K, D] put before the prompts (ReadQG), always attended.
  prefill_chunk_tokens / devices: with the shared prompt, prefill in groups of about this many
  prompt tokens per device (`prefill_chunk_count`; 0 = the whole batch at once), the batch
  being split over `devices` devices.
  prefix_tokens: int32[Pp], a token prefix common to every prompt (e.g. a few-shot prompt's
  instruction and examples), prefilled once for the batch; `tokens` / `mask` are then each
  prompt's rest after it (the samples are those of the whole prompts). Shared prompt only.
  """
  if prefix_tokens is not None and (not shared_prompt or prefix is not None):
    raise ValueError("prefix_tokens needs shared_prompt=True and no soft-prompt prefix")
  if shared_prompt:
    model, params = unrolled(model, params)  # no-op for an unrolled model (Sampler converts once)
  embeds = None
  if prefix is not None:
    from qgjax.models.soft_prompt import prepend

    embeds, mask = prepend(prefix, model.apply({"params": params}, tokens, method=DecoderLM.embed), mask)
    tokens = None
  common = None if prefix_tokens is None else prefix_cache(model, params, prefix_tokens)
  b, p = mask.shape
  beam = sampling.num_beams > 1
  copies = sampling.num_beams if beam else sampling.num_samples
  n_new = sampling.max_new_tokens
  if shared_prompt:
    chunks = prefill_chunk_count(b, p, prefill_chunk_tokens, devices)
    last_logits, prompt = prefill_prompt_cache(model, params, tokens, mask, chunks, embeds=embeds, prefix=common)
    prompt = constrain_cache(prompt)
    mask = with_prefix(mask, common)
  else:
    last_logits, cache = prefill(model, params, tokens, mask, embeds=embeds)
  rows_mask = jnp.repeat(mask, copies, axis=0)
  prompt_len = rows_mask.sum(axis=1).astype(jnp.int32)
  first_logits = jnp.repeat(last_logits, copies, axis=0)

  if shared_prompt:
    cache = constrain_cache(init_sample_cache(model.config, b * copies, n_new, prompt.k[0].dtype))

    def step(new, tok, t):
      logits, new = model.apply({"params": params}, tok, prompt_len + t, prompt, new, t,
                                method=DecoderLM.decode_shared_prompt)
      return logits, constrain_cache(new)

    gather = gather_rows
  else:
    cache = _grow(cache, copies, n_new)
    kv_mask = jnp.pad(rows_mask, ((0, 0), (0, n_new)), constant_values=True)

    def step(cache, tok, t):
      pos = (prompt_len + t)[:, None]
      logits, cache = model.apply({"params": params}, tok[:, None], pos, kv_mask, cache, p + t)
      return logits[:, 0], cache

    def gather(cache, rows):
      return KVCache(k=jnp.take(cache.k, rows, axis=1), v=jnp.take(cache.v, rows, axis=1))

  if beam:
    return beam_loop(step, gather, cache, first_logits, sampling)
  row_keys = None if sampling.greedy else sample_keys(keys, sampling.num_samples)
  return sample_loop(step, cache, first_logits, row_keys, sampling)
