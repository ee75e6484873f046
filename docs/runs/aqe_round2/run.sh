#!/usr/bin/env bash
# AQE, a second, on-policy round of alignment (iterative DPO): the n = 4 run's aligned generator
# (docs/runs/aqe_n4_joined, RSFT+DPO for 0.6 epoch) is the new base and reference; its own 4 sampled expansions
# (T = 1, the generate_train settings) of the first LIMIT non-dev training queries are scored with the same reward
# (nDCG@10 of BM25 over query + expansion at query weight 1), paired best vs worst and trained on with RSFT+DPO
# for one epoch. The split is round 1's (same seed: same 300 dev and 323 test queries). Then post.sh: the round-2
# generator's 4 samples per dev query joined, (T, k) chosen on dev, the test queries sampled at that T.
# Resumable: rerun the script.
#   bash docs/runs/aqe_round2/run.sh && bash docs/runs/aqe_round2/post.sh
set -e
cd "$(dirname "$0")/../../.."
R1=${R1:-/work/runs/aqe_n4_joined}
WORKDIR=${WORKDIR:-/work/runs/aqe_round2}
nice -n 5 .venv/bin/qgjax pipeline --config configs/aqe.py:method=rsft_dpo,n=4 \
  --config.workdir="$WORKDIR" --config.data_dir=../shared/data/nfcorpus --config.generator="$R1/align/export" \
  --config.split.set.dev_queries=300 --config.generate.set.data.limit=${LIMIT:-1200} \
  --config.reward_query_repeats=1 --config.score.set.rewards=bm25_rank,bm25_ndcg \
  --config.score.set.reward=bm25_ndcg --config.pairs.set.rsft.min_reward=0.000001 \
  --config.align.set.num_epochs=1.0 --config.tune_on_dev=True --config.until=align "$@"
