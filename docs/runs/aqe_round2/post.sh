#!/usr/bin/env bash
# After run.sh: the round-2 generator's 4 sampled expansions per query (top-k 50, top-p 0.95, 64 new tokens,
# seed 0) joined into one, (T, k) chosen on the 300 dev queries over T in TEMPS, then the test queries sampled at
# that T and searched at that k; paired tests against BM25 alone and against round 1's best system (its 4 samples
# joined at T = 0.7, k = 16: docs/runs/aqe_n4_temperature). Resumable (generate resumes; rerun the script).
#   bash docs/runs/aqe_round2/post.sh
set -e
cd "$(dirname "$0")/../../.."
R1=${R1:-/work/runs/aqe_n4_joined}; R1T=${R1T:-/work/runs/aqe_n4_temperature}
W=${W:-/work/runs/aqe_round2}; O=$W/joined; D=$W/split/data; HERE=docs/runs/aqe_round2
N=4; TEMPS=${TEMPS:-0.5 0.7 1.0}; K=1,2,4,6,8,12,16,24,32,48,64,96,128
gen() { W=$W bash docs/runs/aqe_n4_temperature/sample.sh $W/align/export "$1" "$2" $N "$3"; }   # split T output
runs=""
for t in $TEMPS; do gen dev $t $O/dev_t$t; runs="$runs --run t$t=$O/dev_t$t"; done
.venv/bin/python tools/aqe_by_k.py --data $D --split dev --join --samples $N --candidates $K $runs \
  --run round1_t0.7=$R1T/aligned_dev_t0.7 --out $HERE/dev_by_k.json
read -r t k < <(python3 -c "
import json; r = json.load(open('$HERE/dev_by_k.json'))['runs']
name = max((n for n in r if n.startswith('t')), key=lambda n: r[n]['by_repeats'][str(r[n]['best'])])
print(name[1:], r[name]['best'])")
echo "dev choice: T = $t, k = $k"
gen test $t $O/test_t$t
.venv/bin/python tools/aqe_by_k.py --data $D --split test --join --samples $N --candidates $K --run round2_t$t=$O/test_t$t \
  --run round1_t0.7=$R1T/aligned_test_t0.7 --out $HERE/test_by_k.json   # a bound: k is chosen on dev
.venv/bin/qgjax evaluate --config configs/evaluate.py --config.data_dir=$D --config.split=test --config.retriever=aqe \
  --config.aqe.input=$O/test_t$t --config.aqe.join_samples=$N --config.aqe.query_repeats=$k \
  --config.measures=nDCG@10,R@100,Success@1,Success@5,Success@20 --config.workdir=$O/evaluate_x${N}_t$t
.venv/bin/python tools/compare_runs.py --data $D --split test --run bm25=$R1/multi/evaluate_bm25/run.bm25.trec \
  --run round1_x${N}_t0.7=$R1T/evaluate_aligned_x${N}_t0.7/run.aqe.trec \
  --run round2_x${N}_t$t=$O/evaluate_x${N}_t$t/run.aqe.trec --measure nDCG@10 --measure R@100 \
  --out $HERE/significance.json
cp $O/evaluate_x${N}_t$t/metrics.json $HERE/metrics_round2_x${N}_t$t.json
