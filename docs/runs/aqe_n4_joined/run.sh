#!/usr/bin/env bash
# AQE on NFCorpus, n = 4 sampled expansions for all 2,290 non-dev training queries, the nDCG@10 reward at
# query weight 1, RSFT+DPO for 0.6 epoch (the settings of the reward_ndcg run, whose greedy expansion gave
# +0.96 nDCG@10 over BM25 after one epoch; 0.6 to fit one 3-hour session beside the test suite: held-out
# pair accuracy has flattened by step 100 in every earlier AQE run), with 300 training queries set apart as dev queries (the split of the n = 8
# runs: same dev and test queries) so each system's test-time k is chosen on dev. Then 4 sampled
# expansions of the aligned generator for the dev and test queries, joined (docs/runs/aqe_n8_multi/gen.sh
# with W/O set). Resumable: rerun the script.
#   bash docs/runs/aqe_n4_joined/run.sh                 # to align, then the joined samples
#   TEST_SAMPLES=4 bash docs/runs/aqe_n4_joined/run.sh --config.until=   # the recipe's own test-time stages,
#   with its joined system (seed generate_joined / generate_dev_joined / generate_sampled from gen.sh's outputs
#   with tools/seed_generation.py first to skip sampling them again)
set -e
cd "$(dirname "$0")/../../.."
WORKDIR=${WORKDIR:-/work/runs/aqe_n4_joined}
nice -n 5 .venv/bin/qgjax pipeline --config configs/aqe.py:method=rsft_dpo,n=4,test_samples=${TEST_SAMPLES:-0} \
  --config.workdir="$WORKDIR" --config.data_dir=../shared/data/nfcorpus \
  --config.split.set.dev_queries=300 \
  --config.reward_query_repeats=1 --config.score.set.rewards=bm25_rank,bm25_ndcg \
  --config.score.set.reward=bm25_ndcg --config.pairs.set.rsft.min_reward=0.000001 \
  --config.align.set.num_epochs=0.6 --config.tune_on_dev=True --config.until=align "$@"
case " $* " in *" --config.until="*) exit 0 ;; esac
# 4 samples joined: the n = 8 half run's generator gave the same test nDCG@10 at the dev-chosen k with the
# first 4 as with 8 (docs/runs/aqe_n8_multi/by_samples), at half the sampling
N=4 WHICH="aligned_test aligned_dev" W="$WORKDIR" O="$WORKDIR/multi" bash docs/runs/aqe_n8_multi/gen.sh
