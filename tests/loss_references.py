"""Float64 loop references for the retriever and cross-encoder losses (kept apart from the code they check)."""

from __future__ import annotations

import numpy as np


def infonce_numpy(q: np.ndarray, pos: np.ndarray, neg: np.ndarray | None, temperature: float,
                  pos_key: np.ndarray | None = None, neg_key: np.ndarray | None = None) -> float:
  """Reference implementation (float64, loops) used by the tests."""
  q, pos = np.asarray(q, np.float64), np.asarray(pos, np.float64)
  cands = [pos[j] for j in range(len(pos))]
  keys = list(pos_key) if pos_key is not None else list(range(len(pos)))
  if neg is not None:
    for i in range(neg.shape[0]):
      for h in range(neg.shape[1]):
        cands.append(np.asarray(neg[i, h], np.float64))
        keys.append(neg_key[i, h] if neg_key is not None else -1 - (i * neg.shape[1] + h))
  total = 0.0
  for i in range(len(q)):
    row = []
    for j, c in enumerate(cands):
      if j != i and pos_key is not None and keys[j] == pos_key[i]:
        continue
      row.append(float(q[i] @ c) / temperature)
    row = np.asarray(row)
    target = float(q[i] @ pos[i]) / temperature
    total += np.log(np.sum(np.exp(row - row.max()))) + row.max() - target
  return total / len(q)


def readqg_ce_numpy(scores: np.ndarray, doc_key: np.ndarray, s_qneg: np.ndarray, pool: int, margin: float,
                    margin_weight: float, has_qneg: np.ndarray, weight: np.ndarray | None = None,
                    query_key: np.ndarray | None = None, s_neg_doc: np.ndarray | None = None,
                    has_neg_doc: np.ndarray | None = None) -> float:
  """Reference: scores f64[B, B] = F(q+_i, d_j) for every pair; the loss by explicit loops. Qrels mode:
  query_key (pool documents of the same query are skipped too) and s_neg_doc = F(q+_i, d-_i) (+ BCE(., 0)
  where has_neg_doc)."""
  b = len(scores)
  total = 0.0
  for i in range(b):
    cands = [(i + s) % b for s in range(1, min(pool, b - 1) + 1)]
    cands = [j for j in cands if doc_key[j] != doc_key[i] and (query_key is None or query_key[j] != query_key[i])]
    bce = np.logaddexp(0, scores[i, i]) - scores[i, i]
    if cands:   # no other document in the pool: only the hard-negative term is dropped
      j = max(cands, key=lambda c: scores[i, c])
      bce += np.logaddexp(0, scores[i, j])
    if s_neg_doc is not None and has_neg_doc[i]:
      bce += np.logaddexp(0, s_neg_doc[i])
    hinge = max(0.0, margin + s_qneg[i] - scores[i, i]) * has_qneg[i]
    total += (1.0 if weight is None else weight[i]) * (bce + margin_weight * hinge)
  return total / (b if weight is None else float(np.sum(weight)))


def margin_mse_numpy(q, pos, neg, ce_pos, ce_neg, weight=None) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
  """Reference (float64, loops): MarginMSE and its analytic gradient w.r.t. q [B, D], pos [B, D], neg [B, H, D].

  loss = sum_i w_i sum_h ((q_i.p_i - q_i.n_ih) - (ce_pos_i - ce_neg_ih))^2 / (H sum_i w_i)
  """
  q, pos, neg = (np.asarray(x, np.float64) for x in (q, pos, neg))
  b, h = neg.shape[:2]
  w = np.ones(b) if weight is None else np.asarray(weight, np.float64)
  norm = h * w.sum()
  total = 0.0
  g_q, g_pos, g_neg = np.zeros_like(q), np.zeros_like(pos), np.zeros_like(neg)
  for i in range(b):
    for k in range(h):
      r = (q[i] @ pos[i] - q[i] @ neg[i, k]) - (float(ce_pos[i]) - float(ce_neg[i, k]))
      total += w[i] * r * r
      g = 2.0 * w[i] * r / norm
      g_q[i] += g * (pos[i] - neg[i, k])
      g_pos[i] += g * q[i]
      g_neg[i, k] -= g * q[i]
  return total / norm, g_q, g_pos, g_neg
