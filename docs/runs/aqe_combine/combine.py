r"""One joined AQE expansion per query from finished sampled-expansion outputs, two ways the joined
text could be made better without new training (a probe; run.sh measures both on dev and test):

  python combine.py OUT.jsonl --union SRC [SRC ...]     # every SRC's first --samples expansions, joined
  python combine.py OUT.jsonl --consensus M SRC         # its first --samples joined, keeping only words
                                                        # whose BM25 stem occurs in >= M of those samples

--union is an ensemble of generators (e.g. round 1 and round 2, or aligned and base) in one text;
--consensus M drops the words only one sample wrote (M = 1 keeps all: the recipe's joined expansion).
Writes {query_id, query, expansion, sample_idx: 0} records for the queries of the first SRC (a query another SRC
lacks gets only the samples it has), searched by tools/aqe_by_k.py without --join.
"""

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))

from qgjax.methods.aqe.repeats import sampled_expansions  # noqa: E402
from qgjax.retrieval.bm25 import Analyzer, BM25Settings  # noqa: E402


def consensus_text(samples: list[str], min_samples: int, analyzer: Analyzer) -> str:
  """The samples joined, keeping the words whose stem occurs in at least `min_samples` of them."""
  words = [re.findall(analyzer.pattern, s) for s in samples]
  stems = [[(analyzer(w) or [None])[0] for w in ws] for ws in words]
  count: dict[str, int] = {}
  for st in stems:
    for s in set(st) - {None}:
      count[s] = count.get(s, 0) + 1
  return " ".join(w for ws, st in zip(words, stems) for w, s in zip(ws, st)
                  if s is not None and count[s] >= min_samples)


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("out")
  ap.add_argument("sources", nargs="+")
  ap.add_argument("--samples", type=int, default=4, help="expansions per query taken from each source")
  how = ap.add_mutually_exclusive_group(required=True)
  how.add_argument("--union", action="store_true")
  how.add_argument("--consensus", type=int, metavar="M")
  args = ap.parse_args()
  if args.consensus is not None and len(args.sources) != 1:
    ap.error("--consensus takes one source")
  per_source = [sampled_expansions(s, args.samples) for s in args.sources]
  analyzer = Analyzer(BM25Settings())
  with open(args.out, "w") as f:
    for qid, rows in per_source[0].items():
      texts = [t for src in per_source for _, t, _ in src.get(qid, [])]
      text = " ".join(texts) if args.union else consensus_text(texts, args.consensus, analyzer)
      f.write(json.dumps({"query_id": qid, "query": rows[0][2], "expansion": text, "sample_idx": 0}) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
