#!/usr/bin/env bash
# The n = 4 run's aligned generator (docs/runs/aqe_n4_joined), its 4 sampled expansions per query joined into one,
# with the sampling temperature chosen on the 300 dev queries together with k (the query's repeat count): the
# joined system was sampled at T = 1 (the recipe's generate_sampled settings) and nothing chose that. For each T in
# TEMPS, 4 samples per dev query (top-k 50, top-p 0.95, 64 new tokens, seed 0, as at T = 1); (T, k) = the dev best
# over T in {TEMPS, 1.0}; then the test queries sampled at that T, searched at that k, and paired tests against BM25
# alone and against the T = 1 joined system. With BASE=1, also the base generator's 4 samples per dev and test query
# at that T, joined, at its own dev-chosen k (the unaligned row at the same temperature). Resumable (generate
# resumes; rerun the script).
#   bash docs/runs/aqe_n4_temperature/run.sh
#   BASE=1 bash docs/runs/aqe_n4_temperature/run.sh
set -e
cd "$(dirname "$0")/../../.."
W=${W:-/work/runs/aqe_n4_joined}; O=${O:-/work/runs/aqe_n4_temperature}; D=$W/split/data; HERE=docs/runs/aqe_n4_temperature
N=4; TEMPS=${TEMPS:-0.3 0.5 0.7}; K=1,2,4,6,8,12,16,24,32,48,64,96,128
MEASURES=nDCG@10,R@100,Success@1,Success@5,Success@20
gen() { W=$W bash $HERE/sample.sh "$1" "$2" "$3" $N "$4"; }   # model split temperature output
runs="--run t1.0=$W/multi/sampled_aligned_dev"
for t in $TEMPS; do
  gen $W/align/export dev $t $O/aligned_dev_t$t
  runs="$runs --run t$t=$O/aligned_dev_t$t"
done
.venv/bin/python tools/aqe_by_k.py --data $D --split dev --join --samples $N --candidates $K $runs --out $HERE/dev_by_k.json
read -r t k < <(python3 -c "
import json; r = json.load(open('$HERE/dev_by_k.json'))['runs']
name = max(r, key=lambda n: r[n]['by_repeats'][str(r[n]['best'])])
print(name[1:], r[name]['best'])")
echo "dev choice: T = $t, k = $k"
test_in=$W/multi/sampled_aligned_test
if [ "$t" != "1.0" ]; then test_in=$O/aligned_test_t$t; gen $W/align/export test $t $test_in; fi
.venv/bin/python tools/aqe_by_k.py --data $D --split test --join --samples $N --candidates $K --run t$t=$test_in \
  --run t1.0=$W/multi/sampled_aligned_test --out $HERE/test_by_k.json   # a bound: k is chosen on dev
.venv/bin/qgjax evaluate --config configs/evaluate.py --config.data_dir=$D --config.split=test --config.retriever=aqe \
  --config.aqe.input=$test_in --config.aqe.join_samples=$N --config.aqe.query_repeats=$k \
  --config.measures=$MEASURES --config.workdir=$O/evaluate_aligned_x${N}_t$t
.venv/bin/python tools/compare_runs.py --data $D --split test --run bm25=$W/multi/evaluate_bm25/run.bm25.trec \
  --run aligned_x${N}_t1.0=$W/multi/evaluate_aligned_x$N/run.aqe.trec \
  --run aligned_x${N}_t$t=$O/evaluate_aligned_x${N}_t$t/run.aqe.trec --measure nDCG@10 --measure R@100 \
  --out $HERE/significance.json
cp $O/evaluate_aligned_x${N}_t$t/metrics.json $HERE/metrics_aligned_x${N}_t$t.json
[ "${BASE:-0}" = 1 ] || exit 0
base_dev=$W/multi/sampled_base_dev; base_test=$W/multi/sampled_base_test
if [ "$t" != "1.0" ]; then
  base_dev=$O/base_dev_t$t; base_test=$O/base_test_t$t
  gen smollm2-135m-instruct dev $t $base_dev; gen smollm2-135m-instruct test $t $base_test
fi
.venv/bin/python tools/aqe_by_k.py --data $D --split dev --join --samples $N --candidates $K --run base_t$t=$base_dev \
  --out $HERE/dev_by_k_base.json
ku=$(python3 -c "import json; print(json.load(open('$HERE/dev_by_k_base.json'))['runs']['base_t$t']['best'])")
.venv/bin/qgjax evaluate --config configs/evaluate.py --config.data_dir=$D --config.split=test --config.retriever=aqe \
  --config.aqe.input=$base_test --config.aqe.join_samples=$N --config.aqe.query_repeats=$ku \
  --config.measures=$MEASURES --config.workdir=$O/evaluate_unaligned_x${N}_t$t
.venv/bin/python tools/compare_runs.py --data $D --split test --run bm25=$W/multi/evaluate_bm25/run.bm25.trec \
  --run unaligned_x${N}_t$t=$O/evaluate_unaligned_x${N}_t$t/run.aqe.trec \
  --run aligned_x${N}_t$t=$O/evaluate_aligned_x${N}_t$t/run.aqe.trec --measure nDCG@10 --measure R@100 \
  --out $HERE/significance_base.json
cp $O/evaluate_unaligned_x${N}_t$t/metrics.json $HERE/metrics_unaligned_x${N}_t$t.json
