#!/usr/bin/env bash
# DPO-QG on the whole NFCorpus, BM25-rank reward, with both guards against the copying that every earlier
# full run's aligned generator learnt (issue 25 item 5; docs/results.md, "Both guards at once"):
#  - pairs: a query that repeats more than 3 consecutive words of its document is never chosen
#    (pairs.chosen_max_copied_span=3; alone, with this reward: docs/runs/dpo_qg_full_guard3);
#  - DPO: R-DPO's length term (align.dpo.length_alpha, Park et al. 2024): alpha x (chosen - rejected tokens)
#    inside the sigmoid, so a longer chosen query earns that part of its margin without the policy moving
#    towards length. ALPHA (default 0.1): the BM25 reward's chosen queries are ~6 tokens longer than the
#    rejected ones and its held-out reward margin was ~2 at step 20, so ~0.6 of it comes free.
# Otherwise the sizes of docs/runs/dpo_qg_full_bm25 (pool 500 docs x 5, 2 pairs a document, 1 query for each
# of the other 3,133 documents, MiniLM InfoNCE one epoch) with 20 DPO steps (held-out accuracy was flat from
# step 20 there), and the pipeline's equal-budget control. Resumable: rerun the script. ~2.7 h on 2 cores
# (9,566 s of stage time on 2026-12-07 without the equal-budget control, --config.equal_budget=False).
set -e
cd "$(dirname "$0")/../../.."
export QGJAX_HUGE_PAGES=${QGJAX_HUGE_PAGES:-1}
WORKDIR=${WORKDIR:-/work/runs/dpo_qg_full/rdpo_guard3}
nice -n 5 .venv/bin/qgjax pipeline --config configs/pipeline.py --config.workdir="$WORKDIR" \
  --config.until="${UNTIL:-}" \
  --config.generate.set.data.limit=500 --config.generate_final.set.data.offset=500 \
  --config.pairs.set.max_pairs_per_doc=2 --config.pairs.set.chosen_max_copied_span="${GUARD:-3}" \
  --config.align.set.num_steps="${ALIGN_STEPS:-20}" --config.align.set.eval_every=5 --config.align.set.log_every=5 \
  --config.align.set.checkpoint.every=5 --config.align.set.dpo.length_alpha="${ALPHA:-0.1}" \
  --config.retriever.set.checkpoint.every=10 "$@"
