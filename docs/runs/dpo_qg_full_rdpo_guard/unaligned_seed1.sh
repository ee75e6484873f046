#!/usr/bin/env bash
# The guard + R-DPO run's filter-on unaligned MiniLM trained again with seed 1 (retrain_seed.py), then evaluated on
# the test split: the unaligned arm's seed-to-seed spread, beside the aligned arm's (nfc_seed/retriever_aligned_seed1).
# Kept as run; retrain_seed.py now does both with the run's evaluate stage as a fourth argument (as ../dpo_qg_cranfield/
# seeds.sh uses it): retrain_seed.py SRC OUT 1 /work/runs/dpo_qg_full/rdpo_guard3/evaluate_unaligned
set -e
cd "$(dirname "$0")/../../.."
nice -n 10 .venv/bin/python docs/runs/dpo_qg_full_rdpo_guard/retrain_seed.py \
  /work/runs/dpo_qg_full/rdpo_guard3/retriever_unaligned /work/runs/nfc_seed/retriever_unaligned_seed1 1
nice -n 10 .venv/bin/qgjax evaluate --config configs/evaluate.py --config.data_dir=/work/runs/shared/data/nfcorpus \
  --config.split=test --config.retriever=dense --config.dense.model=/work/runs/nfc_seed/retriever_unaligned_seed1/export \
  --config.dense.cache_dir=/work/runs/nfc_seed/embeddings --config.measures=nDCG@10,RR@100,R@100,R@1000 \
  --config.workdir=/work/runs/nfc_seed/evaluate_unaligned_seed1
