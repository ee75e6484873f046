"""Sampling from encoder-decoder models (qgjax.models.t5.T5Model): encode once, decode in a loop.

  generate_seq2seq(model, params, tokens int32[B, S], mask bool[B, S], keys[B], sampling)
      -> Samples with R = B * num_samples rows (prompt-major)

The encoder and the cross-attention keys/values run once per prompt; the n samples (or beams)
of a prompt then share them (rows repeated), and only the decoder self-attention cache grows.
Decoding starts from `decoder_start_token_id`, as HF does.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from qgjax.models.t5 import T5Cache, T5Model
from qgjax.sampling.beam import beam_loop
from qgjax.sampling.keys import sample_keys
from qgjax.sampling.logits import SamplingParams
from qgjax.sampling.loop import Samples, sample_loop


def generate_seq2seq(model: T5Model, params: Any, tokens: jax.Array, mask: jax.Array, keys: jax.Array | None,
                     sampling: SamplingParams, prefix: jax.Array | None = None) -> Samples:
  """Samples (or beam-searches) decoder outputs for B right-padded encoder inputs.

  prefix: optional soft-prompt embeddings [B, P, D] put before the input embeddings (ReadQG;
  qgjax.models.soft_prompt.build_prefix), always attended.
  """
  variables = {"params": params}
  beam = sampling.num_beams > 1
  copies = sampling.num_beams if beam else sampling.num_samples
  if prefix is None:
    enc = model.apply(variables, tokens, mask, method=T5Model.encode)
  else:
    from qgjax.models.soft_prompt import prepend

    embeds, mask = prepend(prefix, model.apply(variables, tokens, method=T5Model.embed), mask)
    enc = model.apply(variables, None, mask, embeds=embeds, method=T5Model.encode)
  cache = model.apply(variables, enc, mask, sampling.max_new_tokens, method=T5Model.init_cache)
  cache = jax.tree.map(lambda x: jnp.repeat(x, copies, axis=1), cache)
  enc_mask = jnp.repeat(mask, copies, axis=0)
  rows = tokens.shape[0] * copies

  def step(cache, tok, t):
    logits, cache = model.apply(variables, tok[:, None], None, enc_mask, cache, t + 1, method=T5Model.decode)
    return logits[:, 0], cache

  start = jnp.full((rows,), model.config.decoder_start_token_id, jnp.int32)
  first_logits, cache = model.apply(variables, start[:, None], None, enc_mask, cache, 0, method=T5Model.decode)
  first_logits = first_logits[:, 0]
  if beam:
    def gather(cache: T5Cache, rows: jax.Array) -> T5Cache:
      # Beams only move within their prompt, whose cross-attention rows are all equal.
      return cache.replace(self_k=jnp.take(cache.self_k, rows, axis=1), self_v=jnp.take(cache.self_v, rows, axis=1))
    return beam_loop(step, gather, cache, first_logits, sampling)
  row_keys = None if sampling.greedy else sample_keys(keys, sampling.num_samples)
  return sample_loop(step, cache, first_logits, row_keys, sampling)
