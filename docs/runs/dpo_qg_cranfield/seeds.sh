#!/usr/bin/env bash
# The Cranfield run's two retrievers (MiniLM + unaligned, MiniLM + aligned queries) trained again with seed 1 and
# evaluated on its test queries (retrain_seed.py with the run's own evaluate stages): the seed-to-seed spread beside
# the aligned-vs-unaligned difference, as on NFCorpus. Outputs under O.
set -e
cd "$(dirname "$0")/../../.."
W=${W:-/work/runs/dpo_qg_cranfield}; O=${O:-/work/runs/cranfield_seed}
for arm in unaligned aligned; do
  [ -f $O/${arm}_seed1/evaluate/metrics.json ] && continue
  nice -n 5 .venv/bin/python docs/runs/dpo_qg_full_rdpo_guard/retrain_seed.py $W/retriever_$arm $O/${arm}_seed1 1 \
    $W/evaluate_$arm
done
