#!/usr/bin/env bash
# Cross-encoder reward from NFCorpus training qrels, in-batch negatives (the :qrels preset), 1000 steps of 16,
# then its re-ranking of BM25's top 100 on all 323 test queries. Resumable: rerun the script.
set -e
cd /work/main
nice -n 5 .venv/bin/qgjax train --config configs/cross_encoder.py:qrels --config.data.corpus=../shared/data/nfcorpus \
  --config.workdir=/work/runs/ce_long/train --config.num_steps=1000 --config.batch_size=16 \
  --config.data.doc_max_len=128 --config.data.doc_buckets=128 --config.optim.lr=5e-5 --config.optim.warmup_steps=30 \
  --config.optim.schedule=linear --config.checkpoint.every=50 --config.log_every=10
nice -n 5 .venv/bin/qgjax evaluate --config configs/evaluate.py --config.data_dir=../shared/data/nfcorpus --config.split=test \
  --config.retriever=bm25,bm25+rerank --config.rerank.model=/work/runs/ce_long/train/export \
  --config.rerank.depth=100 --config.rerank.max_len=192 --config.depth=1000 --config.max_queries=0 \
  --config.measures=nDCG@10,R@100,RR@10 --config.workdir=/work/runs/ce_long/evaluate
