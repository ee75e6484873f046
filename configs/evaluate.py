r"""Retrieval evaluation on a BEIR directory: BM25 now; dense and re-ranked systems plug in.

  qgjax evaluate --config configs/evaluate.py
  qgjax evaluate --config configs/evaluate.py --config.data_dir=../shared/data/nfcorpus
  qgjax evaluate --config configs/evaluate.py --config.data_dir=../shared/data/nfcorpus \
      --config.bm25.backend=pyserini --config.workdir=runs/evaluate/nfcorpus-lucene
  qgjax evaluate --config configs/evaluate.py --config.data_dir=../shared/data/nfcorpus \
      --config.retriever=bm25,bm25+rerank --config.rerank.model=runs/cross_encoder_qrels/export \
      --config.measures=nDCG@10,R@100    # configs/cross_encoder.py:qrels's export re-ranks BM25's top 100

Without `data_dir` it runs on the demo corpus shipped in qgjax/data/demo. Writes
<workdir>/metrics.json and one TREC run file per system (run.<system>.trec) and prints a table.

`retriever` lists systems, comma-separated; a system is a chain of stages joined by '+'
(`bm25`, later `dense`, `bm25+rerank`), each stage re-scoring the previous stage's run.
A stage named X is `qgjax.jobs.evaluate.STAGES[X]` or `qgjax.retrieval.X:evaluation_run`,
called as `fn(config, data, queries, previous_run) -> {qid: {doc_id: score}}`; its settings
live in `config.X` (add that group here). `reports` names extra metric modules
(`qgjax.evaluation.X:report(config, data, runs) -> dict`, e.g. query quality), merged into
metrics.json. Arguments: tiny (8 queries, depth 100).
"""

from __future__ import annotations

import ml_collections

from qgjax.config import parse_arg
from qgjax.retrieval.bm25 import default_bm25_config
from qgjax.retrieval.dense import default_index_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, tiny=False)
  c = ml_collections.ConfigDict()
  c.data_dir = ""  # BEIR directory; empty = the shipped demo corpus
  c.split = "test"  # qrels/<split>.tsv; queries_<split>.jsonl if present, else queries.jsonl
  c.workdir = "runs/evaluate"
  c.retriever = "bm25"
  c.depth = 1000  # documents retrieved per query (run files keep this many)
  c.max_queries = 0  # 0 = every judged query
  c.ignore_identical_ids = True  # drop doc_id == query_id from each run before scoring (BEIR's convention)
  c.measures = ("nDCG@10", "RR@10", "R@100", "R@1000", "Success@1", "Success@10")
  c.reports = ()
  c.bm25 = default_bm25_config()  # backend (bm25s | pyserini), k1, b, stemmer, stopwords, cache_dir
  # dense: a bi-encoder dir/name (a retriever export with query/ + doc/ works); index as in configs/mine.py
  c.dense = ml_collections.ConfigDict(dict(
      model="all-minilm-l6-v2", max_len=256, query_max_len=64, batch_size=64, cache_dir="",
      index=default_index_config()))
  # rerank: a cross-encoder dir (e.g. configs/cross_encoder.py's export) re-scoring the top `depth`
  c.rerank = ml_collections.ConfigDict(dict(model="", depth=100, max_len=512, batch_size=32))
  # aqe: BM25 over query + expansion, expansions read from `input` (qgjax.methods.aqe.expansion)
  # (join_samples n > 0: each query's first n sampled expansions joined into one, MuGI-style)
  c.aqe = ml_collections.ConfigDict(dict(input="", query_repeats=1, query_repeats_file="", join_samples=0))
  # reports=("query_quality",): diversity and rel+/rel-/Δrel of a generation output
  c.query_quality = ml_collections.ConfigDict(dict(
      input="", encoder="all-minilm-l6-v2", scorer=ml_collections.ConfigDict(dict(
          kind="bi_encoder", model="", max_len=256, batch_size=64)),
      label_field="", positive_threshold=0.5, max_records=0, seed=0))
  if a.tiny:
    c.max_queries = 8
    c.depth = 100
    c.measures = ("nDCG@10", "RR@10", "R@100", "Success@1")
    c.workdir = "runs/tiny/evaluate"
  return c
