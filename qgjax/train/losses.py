"""Loss functions of the alignment objectives, on per-token / per-sequence log-probs (pure jnp).

  masked_nll(token_logp, mask)                      SFT / RSFT: mean NLL over completion tokens
  dpo_loss(pi_c, pi_r, ref_c, ref_r, ...)           DPO sigmoid (+ label smoothing, + R-DPO length term) or IPO
  rsft_dpo_loss(..., nll_chosen, sft_weight)        AQE's RSFT+DPO: DPO + w * NLL of the chosen query
  mean_pool(states, mask)                           [B, S, D] -> [B, D] over valid positions
  self_contrastive_loss(pooled, tau, same_input)    ReadQG in-batch self-contrastive loss
  same_inputs(tokens, mask, r)                      [N, N] rows with identical (input, r)
  calibration_hinge(logp_fw, logp_rev, eps)         ReadQG calibration max(0, eps - fw + rev)   ("rank")
  greedy_match_f1(a, mask_a, b, mask_b, ngrams)     BERTScore-style greedy-matching F1 of two state sequences
  calibration_margin_hinge(fw, rev, sim, gamma)     ReadQG calibration max(0, gamma * sim - fw + rev) ("margin")

All inputs are f32; sequence log-probs are sums over completion tokens unless a caller passes
length-normalised ones (IPO and the calibration hinge use per-token means).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def masked_nll(token_logp: jax.Array, mask: jax.Array) -> jax.Array:
  """token_logp f32[..., T], mask [..., T] -> scalar: -sum(logp * mask) / max(sum(mask), 1)."""
  mask = mask.astype(jnp.float32)
  return -jnp.sum(token_logp * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class DPOOutput(NamedTuple):
  loss: jax.Array                 # scalar
  metrics: dict[str, jax.Array]   # scalars: reward accuracy, margins, chosen/rejected rewards and log-probs


def dpo_loss(pi_chosen: jax.Array, pi_rejected: jax.Array, ref_chosen: jax.Array, ref_rejected: jax.Array,
             *, beta: float = 0.1, label_smoothing: float = 0.0, loss_type: str = "sigmoid",
             weights: jax.Array | None = None, length_alpha: float = 0.0,
             len_chosen: jax.Array | None = None, len_rejected: jax.Array | None = None) -> DPOOutput:
  """DPO (Rafailov et al. 2023) on sequence log-probs f32[B] of the policy and the reference.

  h = (pi_c - pi_r) - (ref_c - ref_r);  z = beta * h + length_alpha * (len_c - len_r)
  sigmoid: -(1 - ls) * log sigmoid(z) - ls * log sigmoid(-z)   (conservative DPO)
  ipo:     (h - 1 / (2 * beta))^2   (Azar et al. 2023; pass per-token mean log-probs)
  length_alpha > 0 is R-DPO (Park et al. 2024, length-regularised DPO): len_c / len_r f32[B] are the
  completions' token counts, and a chosen answer that is longer than its rejected one already
  satisfies part of the margin, so the policy is not paid for length. Sigmoid loss only.
  Implicit rewards r = beta * (pi - ref); accuracy = mean(r_c > r_r); margin = mean(r_c - r_r).
  `weights` f32[B] (e.g. 0 for padding pairs) weight the mean.
  """
  h = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)
  z = beta * h
  if length_alpha:
    if loss_type != "sigmoid":
      raise ValueError(f"length_alpha (R-DPO) needs loss_type 'sigmoid', got {loss_type!r}")
    if len_chosen is None or len_rejected is None:
      raise ValueError("length_alpha (R-DPO) needs len_chosen and len_rejected")
    z = z + length_alpha * (len_chosen.astype(jnp.float32) - len_rejected.astype(jnp.float32))
  if loss_type == "sigmoid":
    losses = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(z)
              - label_smoothing * jax.nn.log_sigmoid(-z))
  elif loss_type == "ipo":
    losses = (h - 1.0 / (2.0 * beta)) ** 2
  else:
    raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected 'sigmoid' or 'ipo'")
  w = jnp.ones_like(h) if weights is None else weights.astype(jnp.float32)
  wsum = jnp.maximum(jnp.sum(w), 1e-9)

  def mean(x):
    return jnp.sum(x * w) / wsum

  r_c = beta * jax.lax.stop_gradient(pi_chosen - ref_chosen)
  r_r = beta * jax.lax.stop_gradient(pi_rejected - ref_rejected)
  metrics = {
      "rewards/chosen": mean(r_c),
      "rewards/rejected": mean(r_r),
      "rewards/accuracy": mean((r_c > r_r).astype(jnp.float32)),
      "rewards/margin": mean(r_c - r_r),
      "logps/chosen": mean(jax.lax.stop_gradient(pi_chosen)),
      "logps/rejected": mean(jax.lax.stop_gradient(pi_rejected)),
  }
  if length_alpha:
    metrics["length/chosen_minus_rejected"] = mean(len_chosen.astype(jnp.float32) - len_rejected.astype(jnp.float32))
  loss = mean(losses)
  metrics["dpo_loss"] = jax.lax.stop_gradient(loss)
  return DPOOutput(loss, metrics)


def rsft_dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, chosen_token_logp, chosen_mask, *,
                  sft_weight: float = 1.0, beta: float = 0.1, label_smoothing: float = 0.0,
                  loss_type: str = "sigmoid", weights=None, **length) -> DPOOutput:
  """AQE's RSFT+DPO: DPO + sft_weight * masked NLL of the chosen (best) query's tokens; `length`:
  dpo_loss's length_alpha / len_chosen / len_rejected (R-DPO)."""
  out = dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta=beta,
                 label_smoothing=label_smoothing, loss_type=loss_type, weights=weights, **length)
  mask = chosen_mask if weights is None else chosen_mask * weights[:, None].astype(chosen_mask.dtype)
  nll = masked_nll(chosen_token_logp, mask)
  metrics = dict(out.metrics, sft_nll=jax.lax.stop_gradient(nll))
  return DPOOutput(out.loss + sft_weight * nll, metrics)


def mean_pool(states: jax.Array, mask: jax.Array) -> jax.Array:
  """states [B, S, D], mask [B, S] -> f32[B, D]: mean over valid positions."""
  m = mask.astype(jnp.float32)[..., None]
  return jnp.sum(states.astype(jnp.float32) * m, axis=-2) / jnp.maximum(jnp.sum(m, axis=-2), 1.0)


def self_contrastive_loss(pooled: jax.Array, tau: float = 0.25, *, normalize: bool = True,
                          same_input: jax.Array | None = None) -> jax.Array:
  """ReadQG in-batch self-contrastive loss over pooled encoder states f32[N, D].

  Each row must be closest to itself among all N rows (documents x relevance prompts):
  logits = z z^T / tau with z the (L2-normalised) rows; cross-entropy with label i for row i.
  Pushes apart the encodings of different documents and of the same document under
  different relevance prompts, which is what lets the prompt steer generation.
  same_input bool[N, N] (see `same_inputs`): other rows with the very same input (a document's m
  pairs under one r) are left out of row i's candidates; they cannot be pushed apart.
  """
  z = pooled.astype(jnp.float32)
  if normalize:
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-6)
  logits = z @ z.T / tau
  if same_input is not None:
    logits = jnp.where(same_input & ~jnp.eye(logits.shape[0], dtype=bool), -jnp.inf, logits)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.diagonal(logp))


def same_inputs(tokens: jax.Array, mask: jax.Array, r: jax.Array) -> jax.Array:
  """tokens int32[N, S] + mask bool[N, S] + relevance f32[N] -> bool[N, N]: rows i, j are the same input."""
  t = jnp.where(mask, tokens, -1)
  return jnp.all(t[:, None, :] == t[None, :, :], axis=-1) & (r[:, None] == r[None, :])


def calibration_hinge(logp_forward: jax.Array, logp_reversed: jax.Array, eps: float = 1.0) -> jax.Array:
  """ReadQG calibration: mean(max(0, eps - logp_fw + logp_rev)).

  logp_forward: (length-normalised) log P(q | d, r) of each query under its own relevance prompt;
  logp_reversed: the same decoder inputs swapped between the relevance-entailed and the
  contradicted query (log P(q- | d, r+) and log P(q+ | d, r-)).
  """
  return jnp.mean(jnp.maximum(0.0, eps - logp_forward + logp_reversed))


def _window_mean(best: jax.Array, length: jax.Array, n: int) -> jax.Array:
  """best f32[N, T] (>= 0, 0 past `length` int[N]) -> f32[N]: the mean over the windows of n
  consecutive positions inside [0, length) of each window's max; a row shorter than n is one
  window; an empty row gives 0."""
  t = best.shape[1]
  padded = jnp.pad(best, ((0, 0), (0, n - 1)))
  windows = padded[:, :t]
  for s in range(1, n):
    windows = jnp.maximum(windows, padded[:, s:s + t])
  count = jnp.where(length > 0, jnp.maximum(length - n + 1, 1), 0)
  valid = jnp.arange(t)[None, :] < count[:, None]
  return jnp.sum(jnp.where(valid, windows, 0.0), axis=1) / jnp.maximum(count, 1)


def greedy_match_f1(a: jax.Array, mask_a: jax.Array, b: jax.Array, mask_b: jax.Array,
                    ngrams: tuple[int, ...] = (1, 2)) -> jax.Array:
  """BERTScore-style greedy-matching F1 between two state sequences, summed over n-gram sizes.

  a f32[N, Ta, D], b f32[N, Tb, D], masks bool[N, T] RIGHT-padded (valid positions first).
  States are L2-normalised; s_ij = max(0, cos(b_i, a_j)) over valid pairs (a cosine below 0
  counts as no match). For each n: precision p_n = the mean over the windows of n consecutive
  valid positions of b of the best s_ij in the window (any j); recall r_n the same over a;
  F1_n = 2 p_n r_n / (p_n + r_n + 1e-5). -> f32[N] = sum_n F1_n, in [0, len(ngrams)];
  symmetric in (a, b); padding does not change it. (ReadQG's authors max-pool the zero-filled
  [Tb, Ta] matrix and average over the padded length; here only valid windows count.)
  """
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  valid = mask_b.astype(bool)[:, :, None] & mask_a.astype(bool)[:, None, :]
  s = jnp.where(valid, jnp.maximum(jnp.einsum("nid,njd->nij", b, a), 0.0), 0.0)   # [N, Tb, Ta]
  len_a = jnp.sum(mask_a.astype(jnp.int32), axis=1)
  len_b = jnp.sum(mask_b.astype(jnp.int32), axis=1)
  f1 = jnp.zeros(a.shape[0], jnp.float32)
  for n in ngrams:
    p = _window_mean(jnp.max(s, axis=2), len_b, int(n))
    r = _window_mean(jnp.max(s, axis=1), len_a, int(n))
    f1 = f1 + 2.0 * p * r / (p + r + 1e-5)
  return f1


def calibration_margin_hinge(logp_forward: jax.Array, logp_reversed: jax.Array, sim: jax.Array,
                             gamma: float = 1.0) -> jax.Array:
  """ReadQG calibration, SLiC-style margin variant: mean(max(0, gamma * sim - logp_fw + logp_rev)).

  As `calibration_hinge` with a per-row margin gamma * sim f32[N] (e.g. `greedy_match_f1` of the
  forward and swapped decoder states); sim is held constant (stop_gradient).
  """
  margin = gamma * jax.lax.stop_gradient(sim)
  return jnp.mean(jnp.maximum(0.0, margin - logp_forward + logp_reversed))
