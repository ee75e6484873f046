r"""Hard negatives for DPO-QG's contrastive prompt, mined with BM25 or a dense retriever.

  qgjax pipeline --config configs/pipeline.py --config.contrastive.negatives=bm25 --config.contrastive.sft=True \
      --config.generate.config=generate.py:mode=contrastive,n=5 --config.align.config=dpo.py:prompt=contrastive

runs it as the `negatives` and `triples` stages (config: configs/negatives.py).

`source`:
  documents  for every corpus document, its nearest other document (the document's text, cut to
             `max_query_words` words, is the query; the document itself is excluded): the
             negative of the contrastive generation prompt (`prompt.negative` = the output file)
  queries    for every judged (training query, relevant document) pair of `split`
             (queries_<split>.jsonl / qrels/<split>.tsv, grade >= `min_grade`): the query's
             best-ranked document not judged for it at all, the negative of a contrastive
             (document, negative, query) SFT triple
Output: <workdir>/negatives.jsonl, one row per document / pair, in corpus / qrels order:
  documents: {doc_id, negative_id, negative_rank}
  queries:   {doc_id, negative_id, negative_rank, query, query_id}   (what `qgjax train` SFT reads
             with the contrastive prompt: the record's doc_id, negative_id and query)
and <workdir>/summary.json (rows, misses: queries / documents whose top `depth` held no
candidate). Rows without a candidate in the top `depth` are left out and counted.

On P processes every process searches every row (a dense search's encodes run 1/P on each,
`qgjax.parallel.data_parallel`), and process 0 alone writes the outputs.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

from qgjax.config import require
from qgjax.data import demo_dir, storage
from qgjax.data.beir import Corpus, load_qrels, load_queries, queries_path
from qgjax.data.safe_files import ensure_dir, write_json_atomic
from qgjax.errors import ConfigError, InputError
from qgjax.parallel.distributed import is_main_process
from qgjax.retrieval.negatives import first_unexcluded, searcher

log = logging.getLogger(__name__)
SOURCES = ("documents", "queries")


def _document_queries(corpus: Corpus, max_words: int) -> tuple[list[dict], list[str], list[set[str]]]:
  rows, texts, exclude = [], [], []
  for doc in corpus:
    rows.append({"doc_id": doc.doc_id})
    texts.append(" ".join(doc.contents.split()[:max_words]))
    exclude.append({doc.doc_id})
  return rows, texts, exclude


def _training_queries(root: pathlib.Path, corpus: Corpus, split: str, min_grade: int
                      ) -> tuple[list[dict], list[str], list[set[str]]]:
  qrels_file = root / "qrels" / f"{split}.tsv"
  if not qrels_file.is_file():
    raise InputError(f"source=queries needs the collection's '{split}' queries and qrels", path=str(qrels_file))
  queries = load_queries(queries_path(root, split))
  rows, texts, exclude = [], [], []
  for qid, judged in load_qrels(qrels_file).items():
    if qid not in queries:
      continue
    for doc_id, grade in judged.items():
      if grade >= min_grade and doc_id in corpus:
        rows.append({"doc_id": doc_id, "query": queries[qid], "query_id": qid})
        texts.append(queries[qid])
        exclude.append(set(judged))   # any judged document, relevant or not, is no safe negative
  if not rows:
    raise InputError(f"no (query, relevant document) pair in qrels/{split}.tsv", path=str(qrels_file))
  return rows, texts, exclude


def run(config: Any) -> dict:
  require(config, "workdir", "source", "method", "depth")
  if config.source not in SOURCES:
    raise ConfigError(f"config.source must be one of {', '.join(SOURCES)}; got {config.source!r}")
  if int(config.depth) < 2:
    raise ConfigError(f"config.depth must be >= 2 (the best hit may be the excluded document); got {config.depth}")
  root = storage.as_path(storage.resolved(config.data_dir or demo_dir()))
  corpus = Corpus(root / "corpus.jsonl")
  if config.source == "documents":
    rows, texts, exclude = _document_queries(corpus, int(config.max_query_words))
  else:
    rows, texts, exclude = _training_queries(root, corpus, config.split, int(config.min_grade))
  workdir = ensure_dir(config.workdir, what="workdir")
  log.info("negatives: %d %s, %s top %d", len(rows), config.source, config.method, int(config.depth))
  search = searcher(config.method, corpus, config, config.dense.cache_dir)
  hits = []
  batch = int(config.batch_size)
  for start in range(0, len(texts), batch):
    ranked = search(texts[start:start + batch], int(config.depth))
    hits += first_unexcluded(ranked, exclude[start:start + batch])
  out = workdir / "negatives.jsonl"
  lines = [json.dumps({**row, "negative_id": neg, "negative_rank": rank}, ensure_ascii=False) + "\n"
           for row, (neg, rank) in zip(rows, hits) if neg is not None]
  summary = {"source": config.source, "method": config.method, "rows": len(lines), "misses": len(rows) - len(lines),
             "negatives": str(out)}
  if is_main_process():   # every process searched every row; one writes
    storage.write_bytes_atomic(out, "".join(lines).encode("utf-8"))   # temp + rename; gs://: one upload
    write_json_atomic(workdir / "summary.json", summary)
  return summary
