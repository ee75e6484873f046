"""The sampling loop, inside `jit`: one `lax.while_loop` that stops when every row is done.

Model-agnostic: the caller supplies `step_fn(state, tokens int32[R], t) -> (logits f32[R, V], state)`,
which feeds token t (0-based among the new tokens) and returns the logits for token t + 1.
Decoder-only LMs and T5 decoders both fit (see decoder.py and seq2seq.py).

  sample_loop(step_fn, state, first_logits, row_keys, params) -> Samples
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from qgjax.sampling.keys import step_keys
from qgjax.sampling.logits import SamplingParams, choose_tokens

StepFn = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]]


class Samples(NamedTuple):
  """tokens int32[R, N] (pad after the end); logprobs f32[R, N] (raw model log-probs, 0 after the
  end); lengths int32[R] (generated tokens, the EOS included); scores f32[R] (sum of logprobs,
  or the length-penalised beam score for beam search)."""
  tokens: jax.Array
  logprobs: jax.Array
  lengths: jax.Array
  scores: jax.Array


def is_eos(tokens: jax.Array, eos_token_ids: tuple[int, ...]) -> jax.Array:
  """bool mask of tokens that are any of eos_token_ids (all False when there are none)."""
  if not eos_token_ids:
    return jnp.zeros(tokens.shape, bool)
  if len(eos_token_ids) <= 4:
    hit = tokens == eos_token_ids[0]
    for e in eos_token_ids[1:]:
      hit = hit | (tokens == e)
    return hit
  return jnp.isin(tokens, jnp.asarray(eos_token_ids, tokens.dtype))


def sample_loop(step_fn: StepFn, state: Any, first_logits: jax.Array, row_keys: jax.Array,
                params: SamplingParams) -> Samples:
  """Draws up to params.max_new_tokens tokens for each of R rows.

  first_logits f32[R, V]: the logits for the first new token (from the prefill);
  row_keys: typed keys [R] (ignored for greedy). The model runs max_new_tokens - 1 times at most.
  """
  rows = first_logits.shape[0]
  n_new = params.max_new_tokens
  pad = jnp.int32(params.pad_token_id)

  def pick(logits, t):
    keys = None if params.greedy else step_keys(row_keys, t)
    return choose_tokens(logits, keys, params)

  tok, lp = pick(first_logits, 0)
  tokens = jnp.full((rows, n_new), pad, jnp.int32).at[:, 0].set(tok)
  logprobs = jnp.zeros((rows, n_new), jnp.float32).at[:, 0].set(lp)
  lengths = jnp.ones((rows,), jnp.int32)
  done = is_eos(tok, params.eos_token_ids)

  def cond(carry):
    t, _, _, _, _, _, done = carry
    return (t < n_new) & ~jnp.all(done)

  def body(carry):
    t, state, prev, tokens, logprobs, lengths, done = carry
    logits, state = step_fn(state, prev, t - 1)
    tok, lp = pick(logits, t)
    tok = jnp.where(done, pad, tok)
    lp = jnp.where(done, 0.0, lp)
    tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, t))
    logprobs = jax.lax.dynamic_update_slice(logprobs, lp[:, None], (0, t))
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | is_eos(tok, params.eos_token_ids)
    return t + 1, state, tok, tokens, logprobs, lengths, done

  carry = (jnp.int32(1), state, tok, tokens, logprobs, lengths, done)
  _, _, _, tokens, logprobs, lengths, _ = jax.lax.while_loop(cond, body, carry)
  return Samples(tokens, logprobs, lengths, logprobs.sum(axis=-1))
