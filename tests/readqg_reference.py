"""A numpy reference for the ReadQG objective, shared by the T5 and decoder-only loss tests."""

from __future__ import annotations

import numpy as np


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def check_readqg_metrics(m, loss, mle_tokens, fw_mean, rev_mean, pooled, *, margin, tau, w_con, w_cal, keys):
  """Assembles MLE / calibration / self-contrastive from per-row numpy pieces and compares.

  mle_tokens: per-row token log-probs of the forward completions that count; fw_mean / rev_mean:
  per-row mean log-probs of the forward and swapped completions; pooled: [2B, D] pooled states;
  keys: per-row (document tokens, r): rows with another row's key are not its negatives.
  """
  mle = -np.concatenate(mle_tokens).mean()
  cal = np.mean(np.maximum(0, margin - np.array(fw_mean) + np.array(rev_mean)))
  z = np.array(pooled) / np.linalg.norm(pooled, axis=1, keepdims=True)
  logits = z @ z.T / tau
  con = -np.mean([log_softmax(np.array([logits[i, j] for j in range(len(keys)) if j == i or keys[j] != keys[i]]))[
      sum(1 for j in range(i) if keys[j] != keys[i])] for i in range(len(keys))])
  np.testing.assert_allclose(m["mle"], mle, rtol=1e-4)
  np.testing.assert_allclose(m["calibration"], cal, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(m["contrastive"], con, rtol=1e-4)
  np.testing.assert_allclose(loss, mle + w_con * con + w_cal * cal, rtol=1e-4)
