#!/usr/bin/env bash
# 8 sampled expansions per query from the aqe_n8 run's aligned generator (test + dev) and the base one (dev),
# the generate_sampled stage's sampling (T=1, top-k 50, top-p 0.95, 64 new tokens); resumable.
# W (the run) and O (the outputs) default to the half run; the full run's:
#   W=/work/runs/aqe_n8_full O=/work/runs/aqe_n8_full_multi bash docs/runs/aqe_n8_multi/gen.sh
set -e
cd "$(dirname "$0")/../../.."
W=${W:-/work/runs/aqe_n8}; O=${O:-/work/runs/aqe_n8_multi}
gen() {  # model split output
  .venv/bin/qgjax generate --config configs/generate.py:mode=expansion --config.model.name="$1" \
    --config.data.corpus=$W/split/data --config.data.split="$2" --config.data.queries=$W/split/data/queries_$2.jsonl \
    --config.batch_size=8 --config.buckets=128,192,256 --config.sampling.num_samples=8 --config.sampling.temperature=1.0 \
    --config.sampling.top_k=50 --config.sampling.top_p=0.95 --config.sampling.max_new_tokens=64 --config.sampling.seed=0 \
    --config.print_examples=0 --config.output_dir="$3"
}
gen $W/align/export test $O/sampled_aligned_test
gen $W/align/export dev $O/sampled_aligned_dev
gen smollm2-135m-instruct dev $O/sampled_base_dev
