"""Hard-negative mining for generated queries: corpus embeddings, dense index, tuples.

  qgjax mine --config configs/mine.py:tiny
  qgjax mine --config configs/mine.py --config.input=runs/nfcorpus/generate_aligned \
      --config.data_dir=../shared/data/nfcorpus --config.workdir=runs/nfcorpus/mine

`input`: the generate stage's output (sharded dir) or a JSONL of {doc_id, sample_idx, query}.
`index.kind`: auto (exact below `index.scann_min_rows` corpus rows, ScaNN from there; the
threshold comes from tools/bench_mining.py), exact or scann. `reranker.kind`: none,
cross_encoder (a local HF *ForSequenceClassification dir, e.g. `configs/cross_encoder.py`'s
export) or bi_encoder (cosine; empty model = the mining encoder) for false-negative relabelling
(`mining.relabel`: none | relabel | drop | drop_query), Gecko's positive relabelling
(`mining.relabel_positive`: the reranker's top document becomes the positive when it beats the
source document by more than `mining.positive_margin`) and the scores a MarginMSE retriever
learns from (`mining.store_scores`: ce_pos / ce_neg in each tuple; see configs/retriever.py):

  qgjax mine --config configs/mine.py:tiny --config.reranker.kind=bi_encoder \
      --config.mining.relabel_positive=True --config.mining.store_scores=True
Arguments: tiny (the demo corpus and its hand-written queries, top 20, 3 negatives).
"""

from __future__ import annotations

import ml_collections

from qgjax.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  from qgjax.retrieval.dense import default_index_config

  a = parse_arg(arg, tiny=False)
  c = ml_collections.ConfigDict()
  c.input = ""
  c.data_dir = ""                 # BEIR directory; "" = the shipped demo corpus
  c.workdir = "runs/mine"
  c.query_field = "query"
  c.batch_size = 1024             # queries searched and mined per batch
  c.shard_size = 10000
  c.encoder = ml_collections.ConfigDict(dict(
      model="all-minilm-l6-v2", max_len=256, query_max_len=64, batch_size=64, shard_rows=8192,
      cache_dir=""))  # "": <workdir>/embeddings; else the corpus-embedding store shared with score / evaluate
  c.index = default_index_config()
  c.mining = ml_collections.ConfigDict(dict(
      top_k=100, num_negatives=8, min_negatives=1, seed=0, missing_positive="skip", relabel="none",
      relabel_depth=10, relabel_margin=0.0, relabel_oversample=2,
      relabel_positive=False, positive_margin=0.0,  # Gecko: the reranker's top doc becomes the positive
      store_scores=False))  # ce_pos / ce_neg (the reranker's scores) in each tuple, for MarginMSE
  c.reranker = ml_collections.ConfigDict(dict(kind="none", model="", max_len=512, batch_size=32))
  if a.tiny:
    from qgjax.data import demo_dir
    c.input = str(demo_dir() / "sample_queries.jsonl")
    c.workdir = "runs/tiny/mine"
    c.batch_size = 16
    c.shard_size = 16
    c.encoder.batch_size = 16
    c.encoder.max_len = 128
    c.mining.top_k = 20
    c.mining.num_negatives = 3
    c.mining.missing_positive = "sample_all"
  return c
