#!/usr/bin/env bash
# GPL's MarginMSE as the retriever loss (issue 25 item 5), on the queries of the cross-encoder-reward run
# (run.sh, finished): each query's mined tuples are re-mined with the run's trained cross-encoder as the
# reranker, its scores stored (mining.store_scores: ce_pos, ce_neg), and MiniLM is trained to match the
# teacher's margin s(q, pos) - s(q, neg) (similarity=dot as GPL; all-MiniLM-L6-v2 keeps its Normalize module,
# so its margins stay within [-2, 2] while the teacher's are logits) at the InfoNCE retrievers' budget: the
# pipeline's mining (top 100, documents missing from it skipped), one mined negative, batch 64, one epoch,
# lr 2e-5; then the test split as the pipeline's evaluate stages. WHICH="aligned unaligned" by default.
# Resumable: every job is (rerun the script).
set -e
cd "$(dirname "$0")/../../.."
export QGJAX_HUGE_PAGES=${QGJAX_HUGE_PAGES:-1}
RUN=${WORKDIR:-/work/runs/dpo_qg_full/ce}
OUT=$RUN/margin_mse
for which in ${WHICH:-aligned unaligned}; do
  nice -n 5 .venv/bin/qgjax mine --config configs/mine.py --config.input="$RUN/generate_$which" \
    --config.data_dir=../shared/data/nfcorpus --config.workdir="$OUT/mine_$which" \
    --config.encoder.cache_dir="$RUN/cache/embeddings" \
    --config.reranker.kind=cross_encoder --config.reranker.model="$RUN/reward_model/export" \
    --config.reranker.max_len=192 --config.mining.store_scores=True
  nice -n 5 .venv/bin/qgjax train --config configs/retriever.py --config.loss=margin_mse --config.similarity=dot \
    --config.data.train="$OUT/mine_$which/tuples" --config.data.corpus=../shared/data/nfcorpus \
    --config.workdir="$OUT/retriever_$which" --config.export.dir="$OUT/retriever_$which/export"
  nice -n 5 .venv/bin/qgjax evaluate --config configs/evaluate.py --config.data_dir=../shared/data/nfcorpus \
    --config.split=test --config.retriever=dense --config.dense.model="$OUT/retriever_$which/export" \
    --config.dense.cache_dir="$RUN/cache/embeddings" --config.measures=nDCG@10,RR@100,R@100,R@1000 \
    --config.workdir="$OUT/evaluate_$which"
done
