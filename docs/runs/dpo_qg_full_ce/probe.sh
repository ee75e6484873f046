#!/usr/bin/env bash
# What the cross-encoder reward taught the generator, before the whole-corpus stages: one query per document
# for the first N documents alignment never saw (offsets 500..500+N), from the base and from the aligned
# generator (the pipeline's generate_final sampling), then their rewards and the source document's rank
# (score: BM25, MiniLM and the trained cross-encoder) -> retention@k and copying. N=240 by default, as the
# BM25-rank run's copying table. Resumable (generate and score are).
set -e
cd "$(dirname "$0")/../../.."
export QGJAX_HUGE_PAGES=${QGJAX_HUGE_PAGES:-1}
RUN=${WORKDIR:-/work/runs/dpo_qg_full/ce}
N=${N:-240}
OUT=$RUN/probe_$N
for which in ${WHICH:-base aligned}; do   # WHICH=base: the base half alone (needs no align stage)
  model=smollm2-135m-instruct
  [ "$which" = aligned ] && model=$RUN/align/export
  nice -n 5 .venv/bin/qgjax generate --config configs/generate.py:mode=few_shot,n=5 --config.model.name="$model" \
    --config.data.corpus=../shared/data/nfcorpus --config.data.offset=500 --config.data.limit="$N" \
    --config.sampling.num_samples=1 --config.sampling.seed=0 --config.batch_size=16 --config.output_dir="$OUT/generate_$which"
  nice -n 5 .venv/bin/qgjax score --config configs/score.py --config.input="$OUT/generate_$which" \
    --config.data_dir=../shared/data/nfcorpus --config.workdir="$OUT/score_$which" \
    --config.rewards=bm25_rank,dense_rank,cross_encoder --config.reward=cross_encoder \
    --config.cross_encoder.model="$RUN/reward_model/export" --config.cross_encoder.max_len=192 \
    --config.dense.cache_dir="$RUN/cache/embeddings"
done
if [ -d "$OUT/score_base/scored" ] && [ -d "$OUT/score_aligned/scored" ]; then
  .venv/bin/python docs/runs/dpo_qg_full_ce/copying.py "$OUT" > "$OUT/copying.json"
  cat "$OUT/copying.json"
fi
