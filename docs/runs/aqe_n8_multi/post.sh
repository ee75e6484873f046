#!/usr/bin/env bash
# Multi-sample expansion with the aqe_n8 run's generators: each query's 8 sampled expansions (gen.sh) joined
# into one, the query weight k chosen on the 300 dev queries, then the 323 test queries at that k; paired
# tests against BM25 and the run's greedy expansions. Reads /work/runs/aqe_n8 (the run) and
# /work/runs/aqe_n8_multi (gen.sh's outputs); writes this folder's JSON files. W, O and HERE (where the JSON
# goes) default to the half run; the full run's:
#   W=/work/runs/aqe_n8_full O=/work/runs/aqe_n8_full_multi HERE=docs/runs/aqe_n8_full bash docs/runs/aqe_n8_multi/post.sh
set -e
cd "$(dirname "$0")/../../.."
W=${W:-/work/runs/aqe_n8}; O=${O:-/work/runs/aqe_n8_multi}; D=$W/split/data; HERE=${HERE:-docs/runs/aqe_n8_multi}
K=1,2,4,6,8,12,16,24,32,48,64,96,128
.venv/bin/python tools/aqe_by_k.py --data $D --split dev --join --samples 8 --candidates $K \
  --run aligned_x8=$O/sampled_aligned_dev --run unaligned_x8=$O/sampled_base_dev --out $HERE/dev_by_k.json
.venv/bin/python tools/aqe_by_k.py --data $D --split test --join --samples 8 --candidates $K \
  --run aligned_x8=$O/sampled_aligned_test --run unaligned_x8=$W/generate_sampled --out $HERE/test_by_k.json
for which in aligned unaligned; do
  src=$O/sampled_aligned_test; [ $which = aligned ] || src=$W/generate_sampled
  k=$(python3 -c "import json; print(json.load(open('$HERE/dev_by_k.json'))['runs']['${which}_x8']['best'])")
  .venv/bin/qgjax evaluate --config configs/evaluate.py --config.data_dir=$D --config.split=test --config.retriever=aqe \
    --config.aqe.input=$src --config.aqe.join_samples=8 --config.aqe.query_repeats=$k \
    --config.measures=nDCG@10,R@100 --config.workdir=$O/evaluate_${which}_x8
done
.venv/bin/python tools/compare_runs.py --data $D --split test \
  --run bm25=$W/evaluate_bm25/run.bm25.trec --run unaligned=$W/evaluate_base/run.aqe.trec \
  --run aligned=$W/evaluate_aligned/run.aqe.trec --run unaligned_x8=$O/evaluate_unaligned_x8/run.aqe.trec \
  --run aligned_x8=$O/evaluate_aligned_x8/run.aqe.trec \
  --measure nDCG@10 --measure R@100 --out $HERE/significance.json
