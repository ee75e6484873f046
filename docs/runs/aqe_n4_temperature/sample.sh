#!/usr/bin/env bash
# N sampled expansions per query of one split at temperature T (top-k 50, top-p 0.95, 64 new tokens, seed 0: the AQE
# recipe's generate_sampled settings but T) into OUT; resumable.
# Used by run.sh, x8.sh and ../aqe_n8_multi/gen.sh (T = 1); reads W (the run).
#   W=/work/runs/aqe_n4_joined bash docs/runs/aqe_n4_temperature/sample.sh MODEL SPLIT T N OUT
set -e
cd "$(dirname "$0")/../../.."
D=$W/split/data
nice -n 5 .venv/bin/qgjax generate --config configs/generate.py:mode=expansion --config.model.name="$1" \
  --config.data.corpus=$D --config.data.split="$2" --config.data.queries=$D/queries_$2.jsonl \
  --config.batch_size=8 --config.buckets=128,192,256 --config.sampling.num_samples="$4" --config.sampling.temperature="$3" \
  --config.sampling.top_k=50 --config.sampling.top_p=0.95 --config.sampling.max_new_tokens=64 --config.sampling.seed=0 \
  --config.print_examples=0 --config.output_dir="$5"
