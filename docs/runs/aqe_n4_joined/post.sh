#!/usr/bin/env bash
# The n = 4 run's aligned generator, N (default 4) sampled expansions per query joined into one (run.sh's gen.sh
# outputs): k chosen on the 300 dev queries, the 323 test queries searched at that k, BM25 alone beside
# it, paired tests. Reads $W (the run) and $W/multi; writes this folder's JSON files.
set -e
cd "$(dirname "$0")/../../.."
W=${W:-/work/runs/aqe_n4_joined}; O=$W/multi; D=$W/split/data; HERE=docs/runs/aqe_n4_joined; N=${N:-4}
K=1,2,4,6,8,12,16,24,32,48,64,96,128
complete() { grep -qs '"complete": true' "$1/manifest.json"; }   # a finished generate output
dev_runs="--run aligned_x$N=$O/sampled_aligned_dev"   # + the base generator's samples, when there (gen.sh WHICH=base_dev)
complete $O/sampled_base_dev && dev_runs="$dev_runs --run unaligned_x$N=$O/sampled_base_dev"
.venv/bin/python tools/aqe_by_k.py --data $D --split dev --join --samples $N --candidates $K $dev_runs --out $HERE/dev_by_k.json
test_runs="--run aligned_x$N=$O/sampled_aligned_test"
complete $O/sampled_base_test && test_runs="$test_runs --run unaligned_x$N=$O/sampled_base_test"
.venv/bin/python tools/aqe_by_k.py --data $D --split test --join --samples $N --candidates $K $test_runs \
  --out $HERE/test_by_k.json
k=$(python3 -c "import json; print(json.load(open('$HERE/dev_by_k.json'))['runs']['aligned_x$N']['best'])")
.venv/bin/qgjax evaluate --config configs/evaluate.py --config.data_dir=$D --config.split=test --config.retriever=bm25 \
  --config.measures=nDCG@10,R@100,Success@1,Success@5,Success@20 --config.workdir=$O/evaluate_bm25
.venv/bin/qgjax evaluate --config configs/evaluate.py --config.data_dir=$D --config.split=test --config.retriever=aqe \
  --config.aqe.input=$O/sampled_aligned_test --config.aqe.join_samples=$N --config.aqe.query_repeats=$k \
  --config.measures=nDCG@10,R@100,Success@1,Success@5,Success@20 --config.workdir=$O/evaluate_aligned_x$N
runs="--run bm25=$O/evaluate_bm25/run.bm25.trec"
if complete $O/sampled_base_test && complete $O/sampled_base_dev; then   # the base generator's joined samples at its dev k
  ku=$(python3 -c "import json; print(json.load(open('$HERE/dev_by_k.json'))['runs']['unaligned_x$N']['best'])")
  .venv/bin/qgjax evaluate --config configs/evaluate.py --config.data_dir=$D --config.split=test --config.retriever=aqe \
    --config.aqe.input=$O/sampled_base_test --config.aqe.join_samples=$N --config.aqe.query_repeats=$ku \
    --config.measures=nDCG@10,R@100,Success@1,Success@5,Success@20 --config.workdir=$O/evaluate_unaligned_x$N
  runs="$runs --run unaligned_x$N=$O/evaluate_unaligned_x$N/run.aqe.trec"
  cp $O/evaluate_unaligned_x$N/metrics.json $HERE/metrics_unaligned_x$N.json
fi
.venv/bin/python tools/compare_runs.py --data $D --split test $runs \
  --run aligned_x$N=$O/evaluate_aligned_x$N/run.aqe.trec --measure nDCG@10 --measure R@100 --out $HERE/significance.json
cp $O/evaluate_bm25/metrics.json $HERE/metrics_bm25.json; cp $O/evaluate_aligned_x$N/metrics.json $HERE/metrics_aligned_x$N.json
