"""Where the aligned retriever loses to the unaligned one: per-query nDCG@10 differences on the test split, split
by the test query's form (a question ending in "?" or not; short or long by its word count).

  python docs/runs/dpo_qg_full_ce_margin_mse/by_query_form.py <BEIR dir> A=<run.trec> B=<run.trec> > by_query_form.json

For each group: queries, mean nDCG@10 of A and B, mean B - A, and how many queries B wins / loses / ties.
"""
import json
import sys

import numpy as np

from qgjax.data.beir import load_beir
from qgjax.evaluation.ir_metrics import evaluate_per_query, read_trec_run


def main(argv):
  data = load_beir(argv[0], "test")
  (na, pa), (nb, pb) = (a.split("=", 1) for a in argv[1:3])
  per = {n: evaluate_per_query(read_trec_run(p), data.qrels, ["nDCG@10"]) for n, p in ((na, pa), (nb, pb))}
  qids = sorted(data.queries)
  words = {q: len(data.queries[q].split()) for q in qids}
  median = float(np.median(list(words.values())))
  groups = {"all": qids,
            "question (ends in ?)": [q for q in qids if data.queries[q].rstrip().endswith("?")],
            "not a question": [q for q in qids if not data.queries[q].rstrip().endswith("?")],
            f"short (<= {median:g} words)": [q for q in qids if words[q] <= median],
            f"long (> {median:g} words)": [q for q in qids if words[q] > median]}
  out = {"a": {na: pa}, "b": {nb: pb}, "median_words": median, "groups": {}}
  for name, qs in groups.items():
    a = np.array([per[na].get(q, {"nDCG@10": 0.0})["nDCG@10"] for q in qs])
    b = np.array([per[nb].get(q, {"nDCG@10": 0.0})["nDCG@10"] for q in qs])
    d = b - a
    out["groups"][name] = {"queries": len(qs), na: round(float(a.mean()), 4), nb: round(float(b.mean()), 4),
                           "b_minus_a": round(float(d.mean()), 4), "b_wins": int((d > 0).sum()),
                           "b_loses": int((d < 0).sum()), "ties": int((d == 0).sum())}
  json.dump(out, sys.stdout, indent=1)
  print()


if __name__ == "__main__":
  main(sys.argv[1:])
