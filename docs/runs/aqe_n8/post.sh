#!/usr/bin/env bash
# After run.sh: paired tests and the by-k diagnostics of docs/results.md's n=8 section, written here.
set -e
cd "$(dirname "$0")/../../.."
W=${WORKDIR:-/work/runs/aqe_n8}
OUT=docs/runs/aqe_n8
cp "$W/report/report.md" "$W/report/report.png" "$OUT/"
cp "$W/tune_dev_base/repeats.json" "$OUT/tune_dev_base.json"
cp "$W/tune_dev_aligned/repeats.json" "$OUT/tune_dev_aligned.json"
.venv/bin/python tools/compare_runs.py --data "$W/split/data" --split test \
  --run bm25="$W/evaluate_bm25/run.bm25.trec" --run unaligned="$W/evaluate_base/run.aqe.trec" \
  --run best_of_n="$W/evaluate_best_of_n/run.aqe.trec" --run aligned="$W/evaluate_aligned/run.aqe.trec" \
  --measure nDCG@10 --measure R@100 --out "$OUT/significance.json"
.venv/bin/python tools/aqe_by_k.py --data "$W/split/data" --split test \
  --run unaligned="$W/generate_base" --run aligned="$W/generate_aligned" --out "$OUT/test_by_k.json"
.venv/bin/python tools/aqe_by_k.py --data "$W/split/data" --split dev \
  --run unaligned="$W/generate_dev_base" --run aligned="$W/generate_dev_aligned" --out "$OUT/dev_by_k.json"
