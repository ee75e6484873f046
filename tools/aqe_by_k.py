r"""BM25 over query x k + expansion for every k, per generator, on any split: how the AQE recipe's
query weight plays out for finished expansion outputs (a diagnostic: on the test split it is a bound,
never a way to choose k).

  python tools/aqe_by_k.py --data runs/aqe/nfc/split/data --split test \
      --run unaligned=runs/aqe/nfc/generate_base --run aligned=runs/aqe/nfc/generate_aligned \
      --out docs/runs/<run>/test_by_k.json

Each `--run name=<expansion records>` is measured with `qgjax.methods.aqe.repeats` (the recipe's
tune_repeats stage: first `--samples` expansion(s) per query, `--measure` averaged over the judged
queries) at every k of `--candidates`; writes {name: {by_repeats, query_only, best}} and prints a table.
`--join`: the first `--samples` expansions of a query joined into ONE expansion (sample order, one
space apart; `repeats.joined_expansions`) and searched once, the multi-sample expansion of
query2doc-style methods (MuGI; the AQE recipe's `test_samples`); with n joined samples the expansion is
n times longer, so give `--candidates` up to ~n times the usual k.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--data", required=True, help="BEIR directory (the AQE recipe's split/data)")
  ap.add_argument("--split", default="test")
  ap.add_argument("--run", action="append", required=True, metavar="NAME=PATH", help="expansion records")
  ap.add_argument("--candidates", default="1,2,3,4,6,8,12,16,24,32")
  ap.add_argument("--samples", type=int, default=1, help="expansions per query (lowest sample_idx first)")
  ap.add_argument("--join", action="store_true", help="join the first --samples expansions into one")
  ap.add_argument("--measure", default="nDCG@10")
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)

  from qgjax.config import build_config
  from qgjax.methods.aqe import repeats

  runs = dict(r.split("=", 1) for r in args.run)
  out = {}
  for name, path in runs.items():
    with tempfile.TemporaryDirectory() as tmp:
      cfg = build_config(os.path.join(os.path.dirname(__file__), "..", "configs", "repeats.py"), [
          ("input", path), ("data_dir", args.data), ("split", args.split), ("workdir", tmp),
          ("candidates", args.candidates), ("samples_per_query", str(args.samples)),
          ("join_samples", str(args.samples if args.join else 0)), ("measure", args.measure)])
      r = repeats.run(cfg)
    out[name] = {"by_repeats": r["by_repeats"], "query_only": r["query_only"], "best": r["query_repeats"],
                 "queries": r["queries"], "input": r["input"]}
  ks = list(next(iter(out.values()))["by_repeats"])
  print("| k | " + " | ".join(ks) + " | query only |")
  for name, r in out.items():
    print(f"| {name} | " + " | ".join(f"{r['by_repeats'][k]:.4f}" for k in ks) + f" | {r['query_only']:.4f} |")
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      json.dump({"split": args.split, "measure": args.measure, "samples_per_query": args.samples, "join": args.join,
                 "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
                 "runs": out}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
