#!/usr/bin/env bash
# The Cranfield run with three queries per document instead of one for the retrievers (issue 25 item 5's untried
# lever: "a larger retriever training set ... several queries per document"): every other stage as in run.sh.
# The pool, its scores, pairs and the DPO-aligned generator are the run's own (copied, so the pipeline skips them);
# generate_unaligned / generate_aligned sample 3 queries (T = 1, top-k 50, top-p 0.95) for each of the 998 documents
# alignment did not see, and each MiniLM trains one epoch on every mined tuple (in-batch candidates that are the
# query's own document are masked, so a document's other queries are not false negatives). Resumable: rerun.
#   bash docs/runs/dpo_qg_cranfield/three_per_doc.sh
set -e
cd "$(dirname "$0")/../../.."
SRC=${SRC:-/work/runs/dpo_qg_cranfield}; W=${W:-/work/runs/dpo_qg_cranfield_x3}
mkdir -p $W
for s in data cache generate score pairs align evaluate_bm25 evaluate_base; do
  [ -e $W/$s ] || cp -r $SRC/$s $W/
done
WORKDIR=$W DATA=$W/data bash docs/runs/dpo_qg_cranfield/run.sh --config.generate_final.set.sampling.num_samples=3 \
  --config.equal_budget=False "$@"
# paired tests against base MiniLM and the one-query-a-document retrievers of run.sh
.venv/bin/python tools/compare_runs.py --data $W/data --split test --run base=$W/evaluate_base/run.dense.trec \
  --run unaligned_x1=$SRC/evaluate_unaligned/run.dense.trec --run aligned_x1=$SRC/evaluate_aligned/run.dense.trec \
  --run unaligned_x3=$W/evaluate_unaligned/run.dense.trec --run aligned_x3=$W/evaluate_aligned/run.dense.trec \
  --measure nDCG@10 --measure RR@100 --out docs/runs/dpo_qg_cranfield/significance_three_per_doc.json
for f in md json png; do cp $W/report/report.$f docs/runs/dpo_qg_cranfield/report_three_per_doc.$f; done
