#!/usr/bin/env bash
# A second dev set for the AQE choices: NFCorpus's official dev split (324 queries, disjoint from the recipe's
# train / dev / test queries), split name dev2 in a data dir beside the run's corpus. Round 1 (T = 0.7) and round 2
# (T = 0.5) each sample 4 expansions per query; both and their union are measured at every k (the 300-query dev
# set chose round 2, and test ranked it below round 1 and the union: does a second dev set agree with test?).
#   bash docs/runs/aqe_combine/official_dev.sh     # ~12 min on 2 cores; resumable (generate resumes)
set -e
cd "$(dirname "$0")/../../.."
W=${W:-/work/runs/aqe_officialdev}; D=$W/split/data; HERE=docs/runs/aqe_combine; K=1,2,4,6,8,12,16,24,32,48,64,96,128
mkdir -p $D/qrels
[ -e $D/corpus.jsonl ] || ln -s /work/runs/aqe_round2/split/data/corpus.jsonl $D/corpus.jsonl
cp ../shared/data/nfcorpus/queries_dev.jsonl $D/queries_dev2.jsonl
cp ../shared/data/nfcorpus/qrels/dev.tsv $D/qrels/dev2.tsv
W=$W bash docs/runs/aqe_n4_temperature/sample.sh /work/runs/aqe_n4_joined/align/export dev2 0.7 4 $W/round1_t0.7
W=$W bash docs/runs/aqe_n4_temperature/sample.sh /work/runs/aqe_round2/align/export dev2 0.5 4 $W/round2_t0.5
.venv/bin/python $HERE/combine.py $W/union_r1_r2.jsonl --union $W/round1_t0.7 $W/round2_t0.5
.venv/bin/python tools/aqe_by_k.py --data $D --split dev2 --candidates $K --run union_r1_r2=$W/union_r1_r2.jsonl \
  --out $HERE/dev2_by_k_union.json
.venv/bin/python tools/aqe_by_k.py --data $D --split dev2 --join --samples 4 --candidates $K \
  --run round1_t0.7=$W/round1_t0.7 --run round2_t0.5=$W/round2_t0.5 --out $HERE/dev2_by_k.json
# Each system at the k the 300-query dev set chose for it (round 1 16, round 2 8, union 32), with paired tests;
# BM25 alone is searched once, beside round 1
for sys in "round1_t0.7 16 bm25,aqe --config.aqe.join_samples=4" "round2_t0.5 8 aqe --config.aqe.join_samples=4" \
    "union_r1_r2.jsonl 32 aqe"; do
  set -- $sys
  .venv/bin/qgjax evaluate --config configs/evaluate.py --config.data_dir=$D --config.split=dev2 --config.retriever=$3 \
    --config.aqe.input=$W/$1 --config.aqe.query_repeats=$2 $4 --config.measures=nDCG@10,R@100 \
    --config.workdir=$W/evaluate_${1%.jsonl}
done
.venv/bin/python tools/compare_runs.py --data $D --split dev2 --run bm25=$W/evaluate_round1_t0.7/run.bm25.trec \
  --run round1_x4_t0.7_k16=$W/evaluate_round1_t0.7/run.aqe.trec --run round2_x4_t0.5_k8=$W/evaluate_round2_t0.5/run.aqe.trec \
  --run union_r1_r2_k32=$W/evaluate_union_r1_r2/run.aqe.trec --measure nDCG@10 --measure R@100 \
  --out $HERE/significance_dev2.json
