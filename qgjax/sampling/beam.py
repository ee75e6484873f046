"""Beam search inside `jit`, the same algorithm as HF transformers' (v5) vectorised beam search.

Per step, over every beam of a prompt: take the top K = max(2, 1 + #eos) * num_beams continuations
by accumulated log-prob; those that end (EOS, or the last allowed token) among the first
num_beams compete for the finished set with score sum_logprob / generated_len ** length_penalty;
the best num_beams that do not end keep running. The loop stops when no running beam can beat
the finished ones (HF's early-stop heuristic; `early_stopping` True / False / "never").

  beam_loop(step_fn, gather_fn, state, first_logits, params) -> Samples with R = B * num_samples

step_fn(state, tokens int32[B*nb], t) -> (logits f32[B*nb, V], state) as in loop.py;
gather_fn(state, rows int32[B*nb]) -> state with its batch rows reordered (the KV cache).
Rows are prompt-major: row b * num_beams + i is beam i of prompt b.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from qgjax.sampling.logits import SamplingParams
from qgjax.sampling.loop import Samples, StepFn, is_eos

BIG = 1.0e9


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x [B, M, ...], idx int[B, K] -> [B, K, ...]."""
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def beam_loop(step_fn: StepFn, gather_fn: Callable[[Any, jax.Array], Any], state: Any,
              first_logits: jax.Array, params: SamplingParams) -> Samples:
  """first_logits f32[B * nb, V] (the prefill's logits repeated per beam). Returns the best
  params.num_samples finished beams per prompt, best first."""
  nb = params.num_beams
  batch = first_logits.shape[0] // nb
  vocab = first_logits.shape[-1]
  n_new = params.max_new_tokens
  pad = jnp.int32(params.pad_token_id)
  n_keep = max(2, 1 + len(params.eos_token_ids)) * nb
  top_nb = jnp.arange(n_keep) < nb
  lp_pow = params.length_penalty
  offsets = (jnp.arange(batch, dtype=jnp.int32) * nb)[:, None]

  def beam_step(t, logits, carry):
    (run_seq, run_lp, run_score, fin_seq, fin_lp, fin_len, fin_score, fin_done, unsat) = carry
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, nb, vocab)
    acc = (logp + run_score[:, :, None]).reshape(batch, nb * vocab)
    cand_score, cand_idx = jax.lax.top_k(acc, n_keep)
    src = cand_idx // vocab
    tok = (cand_idx % vocab).astype(jnp.int32)
    tok_lp = jnp.take_along_axis(_gather(logp, src), tok[:, :, None], axis=-1)[..., 0]
    cand_seq = jax.lax.dynamic_update_slice(_gather(run_seq, src), tok[:, :, None], (0, 0, t))
    cand_lp = jax.lax.dynamic_update_slice(_gather(run_lp, src), tok_lp[:, :, None], (0, 0, t))
    hits = is_eos(tok, params.eos_token_ids) | (t + 1 >= n_new)

    # Running beams for the next step: the best num_beams that did not end.
    running = cand_score + hits.astype(jnp.float32) * -BIG
    _, nxt = jax.lax.top_k(running, nb)
    run_seq, run_lp, run_score = _gather(cand_seq, nxt), _gather(cand_lp, nxt), _gather(running, nxt)
    rows = (_gather(src, nxt) + offsets).reshape(-1)

    # Finished beams: merge the ones that just ended with the kept set.
    just_done = hits & top_nb[None, :]
    score = cand_score / ((t + 1) ** lp_pow)
    full = jnp.all(fin_done, axis=-1, keepdims=True) & (params.early_stopping is True)
    score = score + full.astype(jnp.float32) * -BIG
    score = score + (~unsat).astype(jnp.float32) * -BIG
    score = score + (~just_done).astype(jnp.float32) * -BIG
    m_score = jnp.concatenate([fin_score, score], axis=1)
    _, best = jax.lax.top_k(m_score, nb)
    cat = lambda a, b: _gather(jnp.concatenate([a, b], axis=1), best)
    fin_seq, fin_lp = cat(fin_seq, cand_seq), cat(fin_lp, cand_lp)
    fin_len = cat(fin_len, jnp.full((batch, n_keep), t + 1, jnp.int32))
    fin_done = cat(fin_done, just_done)
    fin_score = _gather(m_score, best)

    # Can any running beam still beat the worst finished one?
    if params.early_stopping == "never" and lp_pow > 0.0:
      best_len = n_new
    else:
      best_len = t + 1
    best_possible = run_score[:, :1] / (best_len ** lp_pow)
    worst = jnp.where(fin_done, jnp.min(fin_score, axis=1, keepdims=True), -BIG)
    unsat = unsat & jnp.any(best_possible > worst, axis=-1, keepdims=True)
    go_on = (jnp.any(unsat) & ~(jnp.all(fin_done) & (params.early_stopping is True))
             & ~jnp.all(hits))
    carry = (run_seq, run_lp, run_score, fin_seq, fin_lp, fin_len, fin_score, fin_done, unsat)
    return carry, rows, run_seq[:, :, t].reshape(-1), go_on

  run_seq = jnp.full((batch, nb, n_new), pad, jnp.int32)
  run_lp = jnp.zeros((batch, nb, n_new), jnp.float32)
  run_score = jnp.zeros((batch, nb), jnp.float32).at[:, 1:].set(-BIG)
  carry = (run_seq, run_lp, run_score, run_seq, run_lp, jnp.zeros((batch, nb), jnp.int32),
           jnp.full((batch, nb), -BIG, jnp.float32), jnp.zeros((batch, nb), bool),
           jnp.ones((batch, 1), bool))
  carry, rows, tok, go_on = beam_step(0, first_logits, carry)
  state = gather_fn(state, rows)

  def cond(c):
    t, go_on = c[0], c[1]
    return (t < n_new) & go_on

  def body(c):
    t, _, state, tok, carry = c
    logits, state = step_fn(state, tok, t - 1)
    carry, rows, tok, go_on = beam_step(t, logits, carry)
    return t + 1, go_on, gather_fn(state, rows), tok, carry

  _, _, _, _, carry = jax.lax.while_loop(cond, body, (jnp.int32(1), go_on, state, tok, carry))
  _, _, _, fin_seq, fin_lp, fin_len, fin_score, _, _ = carry
  k = params.num_samples
  steps = jnp.arange(n_new)[None, None, :]
  alive = steps < fin_len[:, :k, None]
  tokens = jnp.where(alive, fin_seq[:, :k], pad)
  logprobs = jnp.where(alive, fin_lp[:, :k], 0.0)
  return Samples(tokens.reshape(batch * k, n_new), logprobs.reshape(batch * k, n_new),
                 fin_len[:, :k].reshape(-1), fin_score[:, :k].reshape(-1))
