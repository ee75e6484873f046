#!/usr/bin/env bash
# A real run of the decoder-only retriever (SmolLM2-135M-Instruct, LoRA, last-token pooling) against
# all-MiniLM-L6-v2 at the same step budget on NFCorpus: both trained with InfoNCE on the same mined
# tuples of NFCorpus training queries (qrels/train.tsv pairs, MiniLM-mined hard negatives), both
# evaluated on the 323 test queries (nDCG@10, MRR@100, Recall@100). Every step resumes when run again.
#
#   bash tools/run_decoder_retriever.sh [workdir] [steps] [pairs]     # defaults: runs/decoder_retriever 60 2000
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/decoder_retriever}; STEPS=${2:-60}; PAIRS=${3:-2000}
DATA=${DATA:-../shared/data/nfcorpus}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$W"
# 1. training records {doc_id, sample_idx, query}: the first PAIRS judged (query, relevant doc) pairs of the train split
[ -s "$W/train_queries.jsonl" ] || "$PY" - "$DATA" "$W/train_queries.jsonl" "$PAIRS" <<'PYEOF'
import json, sys
from qgjax.data.beir import load_qrels, load_queries
data, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
queries = load_queries(f"{data}/queries_train.jsonl")
rows, seen = [], {}
for qid, judged in sorted(load_qrels(f"{data}/qrels/train.tsv").items()):
  for doc, grade in sorted(judged.items()):
    if grade >= 1 and qid in queries:
      seen[doc] = seen.get(doc, -1) + 1
      rows.append({"doc_id": doc, "sample_idx": seen[doc], "query": queries[qid], "query_id": qid})
with open(out + ".tmp", "w") as f:
  for r in rows[:n]:
    f.write(json.dumps(r) + "\n")
import os; os.replace(out + ".tmp", out)
PYEOF
# 2. hard negatives below the positive's rank, mined with MiniLM (shared by both retrievers)
.venv/bin/qgjax mine --config configs/mine.py --config.input="$W/train_queries.jsonl" --config.data_dir="$DATA" \
    --config.workdir="$W/mine" --config.mining.num_negatives=1
# 3. the same step budget for both: $STEPS steps of 16 (query, positive, mined negative) tuples
for fam in bert decoder; do
  .venv/bin/qgjax train --config "configs/retriever.py:family=$fam" --config.data.train="$W/mine/tuples" \
      --config.data.corpus="$DATA" --config.workdir="$W/retriever_$fam" --config.batch_size=16 \
      --config.num_steps="$STEPS" --config.data.doc_max_len=128 --config.data.doc_buckets=64,128 \
      --config.export.enabled=true --config.export.dir="$W/retriever_$fam/export"
done
# 4. test-split evaluation of the base MiniLM and both trained retrievers (documents cut at 128 tokens)
for pair in "base:all-minilm-l6-v2" "bert:$W/retriever_bert/export" "decoder:$W/retriever_decoder/export"; do
  name=${pair%%:*}; m=${pair#*:}
  .venv/bin/qgjax evaluate --config configs/evaluate.py --config.data_dir="$DATA" --config.retriever=dense \
      --config.dense.model="$m" --config.dense.max_len=128 --config.depth=100 \
      --config.measures=nDCG@10,RR@100,R@100 --config.workdir="$W/evaluate_$name"
done
