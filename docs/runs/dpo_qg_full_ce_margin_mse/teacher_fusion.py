"""Would the cross-encoder and the start student together be a teacher stronger than the student alone?

  python docs/runs/dpo_qg_full_ce_margin_mse/teacher_fusion.py <BEIR dir> <run.dense.trec> <run.dense+rerank.trec> \
      > docs/runs/dpo_qg_full_ce_margin_mse/teacher_fusion.json

The two runs come from one `qgjax evaluate --config.retriever=dense,dense+rerank` (the base MiniLM's
top 1000, and the cross-encoder's scores of its top 100). Over each query's top 100, both scores are
z-normalised within the query and mixed, fused = (1 - w) z(student) + w z(cross-encoder), for w on a
grid; w = 0 is the student's own order, w = 1 the cross-encoder's. Prints one JSON object: nDCG@10
and RR@10 per w, and each w against w = 0 (paired randomization over the test queries). The grid is
read on the test queries, so the best w is a bound, not a selection; w = 0.5 (equal weight after
normalisation) is the one fixed in advance.

A MarginMSE teacher that mixes the two margins this way is only worth training against if some w
beats w = 0: a teacher no better than the student can only pull it toward the teacher's errors.
"""
import json
import os
import sys

import numpy as np

from qgjax.data.beir import load_qrels
from qgjax.evaluation.ir_metrics import evaluate_per_query, read_trec_run
from qgjax.evaluation.significance import compare

MEASURES = ("nDCG@10", "RR@10")
GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def zscore(scores: dict[str, float]) -> dict[str, float]:
  v = np.array(list(scores.values()), dtype=np.float64)
  sd = v.std() or 1.0
  return {d: (s - v.mean()) / sd for d, s in scores.items()}


def fused_run(student: dict, teacher: dict, w: float) -> dict:
  """Over the documents the teacher scored (the student's top 100), the mixed z-scores per query."""
  out = {}
  for qid, ce in teacher.items():
    if not ce:
      continue
    zs = zscore({d: student[qid][d] for d in ce})
    zc = zscore(ce)
    out[qid] = {d: (1 - w) * zs[d] + w * zc[d] for d in ce}
  return out


def main(data_dir: str, dense_path: str, rerank_path: str) -> dict:
  qrels = load_qrels(os.path.join(data_dir, "qrels", "test.tsv"))
  student, teacher = read_trec_run(dense_path), read_trec_run(rerank_path)
  qids = sorted(qrels)
  per_w = {}
  for w in GRID:
    pq = evaluate_per_query(fused_run(student, teacher, w), qrels, MEASURES)
    per_w[w] = {m: [pq[q][m] for q in qids] for m in MEASURES}
  rows = []
  for w in GRID:
    row = {"w": w}
    for m in MEASURES:
      c = compare(per_w[0.0][m], per_w[w][m])
      row[m] = round(c.mean_b, 4)
      if w:
        row[f"{m} vs w=0"] = {"diff": round(c.diff, 4), "ci": [round(c.ci_low, 4), round(c.ci_high, 4)],
                              "p": round(c.p_value, 4), "wins": c.wins, "losses": c.losses}
    rows.append(row)
  return {"queries": len(qids), "depth": "the student's top 100", "rows": rows}


if __name__ == "__main__":
  print(json.dumps(main(*sys.argv[1:4]), indent=1))
