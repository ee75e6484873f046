#!/usr/bin/env bash
# AQE on NFCorpus, n = 8 sampled expansions for every training query (issue 25 item 6): the settings of
# docs/runs/aqe_n8/run.sh (300 dev queries set apart, nDCG@10 reward at query weight 1, RSFT+DPO for 1.5
# epochs, k tuned on dev per generator) without its split.max_train=1300, so all 2,290 non-dev training
# queries. The split keeps the smallest seeded hashes, so the half run's 1,300 training queries are a
# subset of these and its dev and test queries are the same. When the half run's finished generate_train
# is at HALF (and this run has not started generating), its records and done log are copied in first:
# samples are drawn with keys folded from (sampling seed, query id, sample index), so they are the ones
# this run would draw for those queries, and the generate job's resume then samples only the other 990.
# Resumable: rerun the script.
set -e
cd "$(dirname "$0")/../../.."
WORKDIR=${WORKDIR:-/work/runs/aqe_n8_full}
HALF=${HALF:-/work/runs/aqe_n8}
run() {
  nice -n 5 .venv/bin/qgjax pipeline --config configs/aqe.py:method=rsft_dpo,n=8 \
    --config.workdir="$WORKDIR" --config.data_dir=../shared/data/nfcorpus \
    --config.split.set.dev_queries=300 \
    --config.reward_query_repeats=1 --config.score.set.rewards=bm25_rank,bm25_ndcg \
    --config.score.set.reward=bm25_ndcg --config.pairs.set.rsft.min_reward=0.000001 \
    --config.align.set.num_epochs=1.5 --config.tune_on_dev=True "$@"
}
if [ -e "$HALF/generate_train/STAGE_DONE.json" ] && [ ! -e "$WORKDIR/generate_train" ]; then
  run --config.until=split
  .venv/bin/python tools/seed_generation.py "$HALF/generate_train" "$WORKDIR/generate_train" \
    --inputs "$WORKDIR/split/data/queries_train.jsonl"
fi
run "$@"
