#!/usr/bin/env bash
# AQE on NFCorpus with 8 sampled expansions per training query (issue 25 item 6): half the training queries
# (1,300 of 2,590: split.max_train) and 300 more set apart as dev queries (split.dev_queries), the nDCG@10
# reward at query weight 1 (as docs/runs/aqe_reward_ndcg), RSFT+DPO for 1.5 epochs, each greedy generator's
# test-time query weight chosen on the dev queries (tune_on_dev). Resumable: rerun the script.
# (The 2026-12-06 run was started without dev queries and 2 epochs; it was stopped at DPO step 2 and resumed
# with these settings, the split's dev files added from the split job run alone with the same settings,
# whose train/test files were byte-identical: see docs/results.md.)
set -e
cd "$(dirname "$0")/../../.."
WORKDIR=${WORKDIR:-/work/runs/aqe_n8}
nice -n 5 .venv/bin/qgjax pipeline --config configs/aqe.py:method=rsft_dpo,n=8 \
  --config.workdir="$WORKDIR" --config.data_dir=../shared/data/nfcorpus \
  --config.split.set.max_train=1300 --config.split.set.dev_queries=300 \
  --config.reward_query_repeats=1 --config.score.set.rewards=bm25_rank,bm25_ndcg \
  --config.score.set.reward=bm25_ndcg --config.pairs.set.rsft.min_reward=0.000001 \
  --config.align.set.num_epochs=1.5 --config.tune_on_dev=True "$@"
