r"""Hard negatives for contrastive prompts (qgjax.jobs.negatives), mined with BM25 or a dense retriever.

Run by `qgjax pipeline` (configs/pipeline.py: `contrastive.negatives=bm25|dense` for the generation
prompt's negatives, `contrastive.sft=True` for the contrastive SFT triples of the training queries).
Arguments: source=documents|queries, method=bm25|dense.
"""

from __future__ import annotations

import ml_collections

from qgjax.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  from qgjax.retrieval.bm25 import default_bm25_config
  from qgjax.retrieval.dense import default_index_config

  a = parse_arg(arg, source="documents", method="bm25")
  c = ml_collections.ConfigDict()
  c.data_dir = ""                 # BEIR directory; "" = the shipped demo corpus
  c.workdir = "runs/negatives"
  c.source = a.source             # documents: each document's nearest other one; queries: training triples
  c.method = a.method             # bm25 | dense
  c.split = "train"               # source=queries: queries_<split>.jsonl + qrels/<split>.tsv
  c.min_grade = 1                 # source=queries: the relevant documents of a query
  c.depth = 20                    # documents retrieved per query; rows with no candidate there are counted
  c.max_query_words = 64          # source=documents: the document's first words are its query
  c.batch_size = 256              # queries searched per call
  c.bm25 = default_bm25_config()
  c.dense = ml_collections.ConfigDict(dict(
      model="all-minilm-l6-v2", max_len=256, query_max_len=128, batch_size=64,
      cache_dir="",               # corpus-embedding store; "" = <workdir>/dense_cache
      index=default_index_config()))
  return c
