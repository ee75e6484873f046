"""Copying and retention of the probe's queries (probe.sh): per generator (base, aligned), the means of
qgjax.evaluation.query_quality.lexical_copying, retention@1/10/100 of the source document by each retriever
of the score stage (its `ranks`), and the mean of each reward.
python copying.py <probe dir> [<corpus.jsonl>, default NFCorpus's] -> JSON on stdout."""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
from qgjax.data.beir import Corpus  # noqa: E402
from qgjax.data.records import iter_records  # noqa: E402
from qgjax.evaluation.query_quality import lexical_copying  # noqa: E402

probe = sys.argv[1]
corpus = Corpus(sys.argv[2] if len(sys.argv) > 2 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "shared", "data", "nfcorpus", "corpus.jsonl"))
out = {}
for which in ("base", "aligned"):
  recs = [r for _, _, r in iter_records(os.path.join(probe, f"score_{which}", "scored"))]
  texts = {d.doc_id: d.contents for d in corpus.get_many(sorted({r["doc_id"] for r in recs}))}
  row = {"queries": len(recs), **lexical_copying(recs, texts.__getitem__)}
  for name in sorted(recs[0]["ranks"]):
    ranks = np.array([r["ranks"][name] for r in recs])
    row.update({f"retention@{k}_{name}": float(np.mean(ranks <= k)) for k in (1, 10, 100)})
  row.update({f"mean_{name}": float(np.mean([r["rewards"][name] for r in recs])) for name in sorted(recs[0]["rewards"])})
  out[which] = row
print(json.dumps(out, indent=1))
