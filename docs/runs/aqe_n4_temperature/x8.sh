#!/usr/bin/env bash
# After run.sh: 8 instead of 4 aligned samples per query joined, at run.sh's dev-chosen temperature (T, default
# 0.7). A sample's random key depends only on (seed, query id, sample index), so samples 0-3 are run.sh's. 8 samples
# per dev query; k chosen on dev; the test queries are sampled and searched only if 8 joined beat 4 joined on dev
# (run.sh's dev best at T), with paired tests against BM25 and the 4 joined. Resumable: rerun the script.
#   bash docs/runs/aqe_n4_temperature/x8.sh
set -e
cd "$(dirname "$0")/../../.."
W=${W:-/work/runs/aqe_n4_joined}; O=${O:-/work/runs/aqe_n4_temperature}; D=$W/split/data; HERE=docs/runs/aqe_n4_temperature
T=${T:-0.7}; N=8; K=1,2,4,6,8,12,16,24,32,48,64,96,128; MEASURES=nDCG@10,R@100,Success@1,Success@5,Success@20
gen() { W=$W bash $HERE/sample.sh $W/align/export "$1" $T $N "$2"; }   # split output
gen dev $O/aligned_dev_t${T}_x$N
.venv/bin/python tools/aqe_by_k.py --data $D --split dev --join --samples $N --candidates $K \
  --run t${T}_x$N=$O/aligned_dev_t${T}_x$N --out $HERE/dev_by_k_x$N.json
read -r k8 best8 best4 < <(python3 -c "
import json; r8 = json.load(open('$HERE/dev_by_k_x$N.json'))['runs']['t${T}_x$N']
r4 = json.load(open('$HERE/dev_by_k.json'))['runs']['t$T']
print(r8['best'], r8['by_repeats'][str(r8['best'])], r4['by_repeats'][str(r4['best'])])")
echo "dev: $N joined $best8 (k = $k8), 4 joined $best4"
python3 -c "import sys; sys.exit(0 if $best8 > $best4 else 1)" || { echo "8 joined no better on dev: test not run"; exit 0; }
gen test $O/aligned_test_t${T}_x$N
.venv/bin/qgjax evaluate --config configs/evaluate.py --config.data_dir=$D --config.split=test --config.retriever=aqe \
  --config.aqe.input=$O/aligned_test_t${T}_x$N --config.aqe.join_samples=$N --config.aqe.query_repeats=$k8 \
  --config.measures=$MEASURES --config.workdir=$O/evaluate_aligned_x${N}_t$T
.venv/bin/python tools/compare_runs.py --data $D --split test --run bm25=$W/multi/evaluate_bm25/run.bm25.trec \
  --run aligned_x4_t$T=$O/evaluate_aligned_x4_t$T/run.aqe.trec \
  --run aligned_x${N}_t$T=$O/evaluate_aligned_x${N}_t$T/run.aqe.trec --measure nDCG@10 --measure R@100 \
  --out $HERE/significance_x$N.json
cp $O/evaluate_aligned_x${N}_t$T/metrics.json $HERE/metrics_aligned_x${N}_t$T.json
