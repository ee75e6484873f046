r"""The best of a query's first n sampled AQE expansions, chosen by its own judgements: a ceiling on
what aligning towards the best of n could reach (an oracle that reads the qrels, never a system).

  python tools/aqe_oracle.py --data runs/aqe/nfc/split/data --split train \
      --run runs/aqe/nfc/generate_train --repeats 1,4,24 --out docs/runs/<run>/oracle_best_of_n.json

For each k in --repeats, BM25 searches query x k + expansion (`qgjax.rewards.base.aqe_text`) for
every sample; per query, `--measure` of the query alone, of its first sample, the mean over its
samples, and the best of its first n samples for n = 1..N (N = the most samples any query has), and
the best of n or the query alone. Means over the judged queries that have expansions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--data", required=True, help="BEIR directory (the AQE recipe's split/data)")
  ap.add_argument("--split", default="train")
  ap.add_argument("--run", required=True, help="expansion records (several samples per query)")
  ap.add_argument("--repeats", default="1,4,24", help="query repeat counts k")
  ap.add_argument("--measure", default="nDCG@10")
  ap.add_argument("--max-queries", type=int, default=0, help="the first N queries by id (0 = all)")
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)

  from qgjax.data.beir import Corpus, load_qrels, load_queries, queries_path
  from qgjax.methods.aqe.repeats import sampled_expansions, search_measure
  from qgjax.retrieval.bm25 import default_bm25_config, open_bm25_from_config
  from qgjax.rewards.base import aqe_text

  corpus = Corpus(os.path.join(args.data, "corpus.jsonl"))
  qrels = load_qrels(os.path.join(args.data, "qrels", f"{args.split}.tsv"), doc_ids=corpus, min_grade=1)
  texts = load_queries(queries_path(args.data, args.split))
  samples = {q: rows for q, rows in sampled_expansions(args.run, 10**6).items() if q in qrels}
  if args.max_queries:
    samples = dict(sorted(samples.items())[: args.max_queries])
  n_max = max(len(rows) for rows in samples.values())
  bm25 = open_bm25_from_config(corpus, default_bm25_config())

  per_query = lambda searches: search_measure(bm25, searches, qrels, args.measure, 100)

  alone = per_query({f"{q}\t-": texts[q] for q in samples})
  mean = lambda xs: sum(xs) / len(xs)
  out = {}
  for k in (int(x) for x in args.repeats.split(",")):
    scores = per_query({f"{q}\t{i}": aqe_text(texts[q], text, k) for q, rows in samples.items()
                        for i, (_, text, _) in enumerate(rows)})
    by_q = {q: [scores[f"{q}\t{i}"] for i in range(len(rows))] for q, rows in samples.items()}
    row = {"query_only": mean([alone[f"{q}\t-"] for q in samples]),
           "one_sample_mean": mean([mean(v) for v in by_q.values()]),
           "best_of": {n: mean([max(v[:n]) for v in by_q.values()]) for n in range(1, n_max + 1)}}
    row["best_of_n_or_query"] = mean([max(max(v), alone[f"{q}\t-"]) for q, v in by_q.items()])
    out[str(k)] = {key: (round(v, 4) if isinstance(v, float) else {n: round(x, 4) for n, x in v.items()})
                   for key, v in row.items()}
    best = " ".join(f"{n}:{x:.4f}" for n, x in out[str(k)]["best_of"].items())
    print(f"k={k}: query only {row['query_only']:.4f}, one sample {row['one_sample_mean']:.4f}, best of n {best}, "
          f"best of {n_max} or the query {row['best_of_n_or_query']:.4f}")
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      json.dump({"split": args.split, "measure": args.measure, "queries": len(samples), "samples_max": n_max,
                 "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
                 "by_repeats": out}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
