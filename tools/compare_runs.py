r"""Paired significance of the differences between retrieval runs on one collection's test queries.

  python tools/compare_runs.py --data ../shared/data/nfcorpus --split test \
      --run bm25=runs/x/evaluate_bm25/run.bm25.trec --run base=runs/x/evaluate_base/run.dense.trec \
      --run unaligned=runs/x/evaluate_unaligned/run.dense.trec --run aligned=runs/x/evaluate_aligned/run.dense.trec \
      --measure nDCG@10 --measure R@100 --out docs/runs/x/significance.json

Per-query scores with trec_eval semantics (`qgjax.evaluation.ir_metrics.evaluate_per_query`: every
judged query of the split, a query missing from a run scores 0), then for every pair of runs, later
against earlier in the order given: mean difference, its 95% bootstrap interval, the two-sided paired
randomization p-value (`qgjax.evaluation.significance`, 10,000 samples) and per-query wins / losses /
ties. Prints a table per measure; --out writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data", required=True, help="BEIR directory (qrels/<split>.tsv)")
  p.add_argument("--split", default="test")
  p.add_argument("--run", action="append", required=True, metavar="NAME=TREC_FILE")
  p.add_argument("--measure", action="append", default=None)
  p.add_argument("--samples", type=int, default=10_000)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="")
  return p.parse_args(argv)


def per_query(runs: dict[str, str], qrels: dict, measures: list[str]) -> dict[str, dict[str, list[float]]]:
  """{run name: {measure: [score of each judged query, in sorted query-id order]}}."""
  from qgjax.evaluation.ir_metrics import evaluate_per_query, read_trec_run

  out = {}
  for name, path in runs.items():
    scores = evaluate_per_query(read_trec_run(path), qrels, measures)
    out[name] = {m: [scores[q][m] for q in sorted(scores)] for m in measures}
  return out


def main(argv=None) -> dict:
  args = parse_args(argv)
  from qgjax.data.beir import load_qrels
  from qgjax.errors import ConfigError
  from qgjax.evaluation.significance import compare

  runs = {}
  for spec in args.run:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
      raise ConfigError(f"--run takes NAME=TREC_FILE; got {spec!r}")
    runs[name] = path
  measures = args.measure or ["nDCG@10"]
  qrels = load_qrels(os.path.join(args.data, "qrels", f"{args.split}.tsv"))
  scores = per_query(runs, qrels, measures)
  result = {"data": args.data, "split": args.split, "queries": len(qrels), "runs": runs, "samples": args.samples,
            "means": {n: {m: sum(v) / len(v) for m, v in s.items()} for n, s in scores.items()}, "pairs": []}
  for m in measures:
    print(f"\n{m} over {len(qrels)} queries (B - A; 95% bootstrap interval; paired randomization p)")
    print(f"{'A':>12} {'B':>12} {'mean A':>8} {'mean B':>8} {'B - A':>8} {'interval':>20} {'p':>7}  wins/losses/ties")
    for a, b in itertools.combinations(runs, 2):
      c = compare(scores[a][m], scores[b][m], args.samples, args.seed)
      result["pairs"].append({"measure": m, "a": a, "b": b, **dataclasses.asdict(c)})
      print(f"{a:>12} {b:>12} {c.mean_a:8.4f} {c.mean_b:8.4f} {c.diff:+8.4f} "
            f"{f'[{c.ci_low:+.4f}, {c.ci_high:+.4f}]':>20} {c.p_value:7.4f}  {c.wins}/{c.losses}/{c.ties}")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
