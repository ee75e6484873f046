"""A numpy reference for the ReadQG objective, shared by the T5 and decoder-only loss tests."""

from __future__ import annotations

import numpy as np


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def greedy_f1(ref, hyp, ngrams):
  """float64 greedy-matching F1 of two UNPADDED state sequences ref [La, D], hyp [Lb, D], summed
  over n-gram sizes: cosines clipped at 0; for each n the precision is the mean, over every run of
  n consecutive hyp positions (the whole sequence when shorter than n), of the best cosine
  between any position of the run and any ref position; recall the same with ref and hyp swapped;
  F1 = 2 p r / (p + r + 1e-5)."""
  ref, hyp = np.asarray(ref, np.float64), np.asarray(hyp, np.float64)

  def side(x, y, n):
    runs = [range(k, k + n) for k in range(len(x) - n + 1)] or [range(len(x))]
    best = []
    for run in runs:
      best.append(max(max(0.0, float(x[i] @ y[j] / np.linalg.norm(x[i]) / np.linalg.norm(y[j])))
                      for i in run for j in range(len(y))))
    return sum(best) / len(best)

  total = 0.0
  for n in ngrams:
    p, r = side(hyp, ref, n), side(ref, hyp, n)
    total += 2 * p * r / (p + r + 1e-5)
  return total


def check_readqg_metrics(m, loss, mle_tokens, fw_mean, rev_mean, pooled, *, margin, tau, w_con, w_cal, keys,
                         sim=None):
  """Assembles MLE / calibration / self-contrastive from per-row numpy pieces and compares.

  mle_tokens: per-row token log-probs of the forward completions that count; fw_mean / rev_mean:
  per-row mean log-probs of the forward and swapped completions; pooled: [2B, D] pooled states;
  keys: per-row (document tokens, r): rows with another row's key are not its negatives; sim:
  per-row similarities of the "margin" calibration (hinge margin = margin * sim), None for "rank".
  """
  mle = -np.concatenate(mle_tokens).mean()
  row_margin = margin if sim is None else margin * np.asarray(sim, np.float64)
  cal = np.mean(np.maximum(0, row_margin - np.array(fw_mean) + np.array(rev_mean)))
  if sim is not None:
    np.testing.assert_allclose(m["calibration/similarity"], np.mean(sim), rtol=1e-4)
  z = np.array(pooled) / np.linalg.norm(pooled, axis=1, keepdims=True)
  logits = z @ z.T / tau
  con = -np.mean([log_softmax(np.array([logits[i, j] for j in range(len(keys)) if j == i or keys[j] != keys[i]]))[
      sum(1 for j in range(i) if keys[j] != keys[i])] for i in range(len(keys))])
  np.testing.assert_allclose(m["mle"], mle, rtol=1e-4)
  np.testing.assert_allclose(m["calibration"], cal, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(m["contrastive"], con, rtol=1e-4)
  np.testing.assert_allclose(loss, mle + w_con * con + w_cal * cal, rtol=1e-4)
