#!/usr/bin/env bash
# DPO-QG on the whole NFCorpus with the cross-encoder reward (issue 25 item 4, second variant): the same
# sizes as the BM25-rank run (docs/runs/dpo_qg_full_bm25), but the `reward_model` stage first trains the
# MiniLM cross-encoder from NFCorpus's training qrels (the run of docs/runs/ce_qrels_1000: 1,000 steps of
# 16, in-batch negatives, documents cut to 128 tokens) and `score` ranks each pool query by its score.
# Resumable: rerun the script. Arguments are passed on to `qgjax pipeline` (see margin_mse.sh). UNTIL=<stage> stops after that stage (e.g. UNTIL=align); ALIGN_STEPS=<n> DPO
# steps (40 as in the BM25-rank run; the 2026-12-06 run on a slower host used 20). The pipeline's equal_budget
# (default on since 2026-12-06) adds retriever_aligned_equal + evaluate_aligned_equal: the aligned tuples cut to
# the unaligned count, the equal-budget control of the BM25-rank run (~17 min more).
set -e
cd "$(dirname "$0")/../../.."
export QGJAX_HUGE_PAGES=${QGJAX_HUGE_PAGES:-1}   # glibc huge pages for XLA:CPU buffers (qgjax.host_allocator), as the benchmarks
WORKDIR=${WORKDIR:-/work/runs/dpo_qg_full/ce}
nice -n 5 .venv/bin/qgjax pipeline --config configs/pipeline.py --config.workdir="$WORKDIR" \
  --config.until="${UNTIL:-}" \
  --config.generate.set.data.limit=500 --config.generate_final.set.data.offset=500 \
  --config.score.set.rewards=bm25_rank,dense_rank,cross_encoder --config.score.set.reward=cross_encoder \
  --config.score.set.cross_encoder.max_len=192 \
  --config.reward_model.set.num_steps=1000 --config.reward_model.set.batch_size=16 \
  --config.reward_model.set.data.doc_max_len=128 --config.reward_model.set.data.doc_buckets=128 \
  --config.reward_model.set.optim.lr=5e-5 --config.reward_model.set.optim.warmup_steps=30 \
  --config.reward_model.set.optim.schedule=linear --config.reward_model.set.checkpoint.every=50 \
  --config.reward_model.set.log_every=10 \
  --config.pairs.set.max_pairs_per_doc=2 \
  --config.align.set.num_steps="${ALIGN_STEPS:-40}" --config.align.set.eval_every=10 --config.align.set.log_every=5 \
  --config.align.set.checkpoint.every=10 "$@"
