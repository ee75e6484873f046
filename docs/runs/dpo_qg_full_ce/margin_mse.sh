#!/usr/bin/env bash
# GPL's MarginMSE as the retriever loss (issue 25 item 5), on the queries of the cross-encoder-reward run
# (run.sh): a copy of that run's workdir up to its generated and scored queries, then the same pipeline
# with the mine stages reranking by the run's trained cross-encoder (the `reward_model` stage: the pipeline
# wires it as mine's reranker when reranker.kind=cross_encoder names no model) and storing its scores
# (ce_pos, ce_neg), and the retrievers trained to match the teacher's margin s(q, pos) - s(q, neg) at the
# InfoNCE retrievers' budget (top-100 mining, one mined negative, batch 64, one epoch, lr 2e-5).
# all-MiniLM-L6-v2 normalises its outputs (|margin| <= 2) while the teacher's margins are logits, so the
# student's margins are scaled by 20 (= 1 / InfoNCE's temperature; retriever margin_scale). The equal-budget
# retriever (pipeline equal_budget) comes with it. Resumable: rerun the script (the retrievers checkpoint every
# 10 steps: a session's end kills the run, and at 100, a retriever of ~50 steps started over). Without a finished run.sh
# workdir at WORKDIR (the stages copied are those it has), every stage runs here: ~3.5 h on 2 cores (the
# 2026-12-06 second session: OUT=/work/runs/dpo_qg_full/ce-margin_mse, WORKDIR unset and absent).
# Another student scale on a finished MarginMSE run's mined tuples (only the retrievers and evaluations run):
#   WORKDIR=/work/runs/dpo_qg_full/ce-margin_mse OUT=/work/runs/dpo_qg_full/ce-margin_mse-scale4 \
#     MARGIN_SCALE=4 COPY_ALSO="mine_unaligned mine_aligned" bash docs/runs/dpo_qg_full_ce/margin_mse.sh
# MARGIN_SCALE_FIT=<N> instead fits each retriever's scale on its first N training tuples (retriever
# margin_scale_fit: least squares of the teacher's margins on the start student's). TEACHER_WEIGHT=<w> < 1
# mixes the teacher with the start student (retriever teacher_weight: w x teacher + (1 - w) x the start
# student's margins at the teacher's spread). Arguments are passed on to `qgjax pipeline`; COPY=<stages> replaces the
# list of stages copied from WORKDIR. The copy-guard variant with the mixed teacher (pairs never choose a query that
# repeats more than 3 consecutive words of its document; the unaligned side reused from the mix0.5 run, everything
# from pairs on the aligned side run again: ~2.5 h on 2 cores):
#   WORKDIR=/work/runs/dpo_qg_full/ce-margin_mse-mix0.5 OUT=/work/runs/dpo_qg_full/ce-guard3-mix0.5 TEACHER_WEIGHT=0.5 \
#     MARGIN_SCALE_FIT=100000 COPY="reward_model generate score generate_unaligned score_unaligned evaluate_bm25 \
#     evaluate_base cache mine_unaligned retriever_unaligned evaluate_unaligned" \
#     bash docs/runs/dpo_qg_full_ce/margin_mse.sh --config.pairs.set.chosen_max_copied_span=3
set -e
cd "$(dirname "$0")"
RUN=${WORKDIR:-/work/runs/dpo_qg_full/ce}
OUT=${OUT:-$RUN-margin_mse}
mkdir -p "$OUT"
for stage in ${COPY:-reward_model generate score pairs align generate_unaligned generate_aligned score_unaligned \
             score_aligned evaluate_bm25 evaluate_base cache} ${COPY_ALSO:-}; do
  [ -e "$OUT/$stage" ] || [ ! -e "$RUN/$stage" ] || cp -r "$RUN/$stage" "$OUT/"
done
WORKDIR="$OUT" ALIGN_STEPS=${ALIGN_STEPS:-20} bash ./run.sh \
  --config.mine.set.reranker.kind=cross_encoder --config.mine.set.reranker.max_len=192 \
  --config.mine.set.mining.store_scores=True \
  --config.retriever.set.loss=margin_mse --config.retriever.set.margin_scale="${MARGIN_SCALE:-20.0}" \
  --config.retriever.set.margin_scale_fit="${MARGIN_SCALE_FIT:-0}" \
  --config.retriever.set.teacher_weight="${TEACHER_WEIGHT:-1.0}" \
  --config.retriever.set.checkpoint.every=10 "$@"
