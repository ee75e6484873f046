#!/usr/bin/env bash
# Two ways to a better joined AQE expansion without new training, measured on the 300 dev queries (k chosen there)
# and on the test queries (a bound), from outputs that already exist: round 1's 4 samples at T = 0.7 and the base
# generator's at T = 0.7 (docs/runs/aqe_n4_temperature), round 2's at T = 0.5 (docs/runs/aqe_round2):
#  - union: two or three generators' samples joined into one text (8 or 12 samples);
#  - consensus M: one generator's 4 samples joined, keeping the words whose stem >= M of them wrote.
#   bash docs/runs/aqe_combine/run.sh      # ~2 min (BM25 only)
set -e
cd "$(dirname "$0")/../../.."
T=${T:-/work/runs/aqe_n4_temperature}; R=${R:-/work/runs/aqe_round2/joined}; D=${D:-/work/runs/aqe_round2/split/data}
O=${O:-/work/runs/aqe_combine}; HERE=docs/runs/aqe_combine; K=1,2,4,6,8,12,16,24,32,48,64,96,128
mkdir -p $O
for split in dev test; do
  r1=$T/aligned_${split}_t0.7; base=$T/base_${split}_t0.7; r2=$R/${split}_t0.5
  .venv/bin/python $HERE/combine.py $O/${split}_union_r1_r2.jsonl --union $r1 $r2
  .venv/bin/python $HERE/combine.py $O/${split}_union_r1_base.jsonl --union $r1 $base
  .venv/bin/python $HERE/combine.py $O/${split}_union_r1_r2_base.jsonl --union $r1 $r2 $base
  runs=""
  for m in 1 2 3; do
    .venv/bin/python $HERE/combine.py $O/${split}_r1_consensus$m.jsonl --consensus $m $r1
    .venv/bin/python $HERE/combine.py $O/${split}_r2_consensus$m.jsonl --consensus $m $r2
    runs="$runs --run r1_consensus$m=$O/${split}_r1_consensus$m.jsonl --run r2_consensus$m=$O/${split}_r2_consensus$m.jsonl"
  done
  .venv/bin/python tools/aqe_by_k.py --data $D --split $split --candidates $K \
    --run union_r1_r2=$O/${split}_union_r1_r2.jsonl --run union_r1_base=$O/${split}_union_r1_base.jsonl \
    --run union_r1_r2_base=$O/${split}_union_r1_r2_base.jsonl $runs --out $HERE/${split}_by_k.json
done
# The best union on dev (round 1 + round 2 at their own temperatures) at its dev k, on test with paired tests
# (not the dev protocol's choice: round 2 alone is better on dev; recorded to size what a union adds).
k=$(python3 -c "import json; print(json.load(open('$HERE/dev_by_k.json'))['runs']['union_r1_r2']['best'])")
.venv/bin/qgjax evaluate --config configs/evaluate.py --config.data_dir=$D --config.split=test --config.retriever=aqe \
  --config.aqe.input=$O/test_union_r1_r2.jsonl --config.aqe.query_repeats=$k \
  --config.measures=nDCG@10,R@100,Success@1,Success@5,Success@20 --config.workdir=$O/evaluate_union_r1_r2
.venv/bin/python tools/compare_runs.py --data $D --split test --run bm25=/work/runs/aqe_n4_joined/multi/evaluate_bm25/run.bm25.trec \
  --run round1_x4_t0.7=$T/evaluate_aligned_x4_t0.7/run.aqe.trec --run union_r1_r2=$O/evaluate_union_r1_r2/run.aqe.trec \
  --measure nDCG@10 --measure R@100 --out $HERE/significance.json
cp $O/evaluate_union_r1_r2/metrics.json $HERE/metrics_union_r1_r2.json
