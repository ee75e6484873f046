"""Hard negatives for contrastive prompts: the best-ranked document a search returns that is not excluded.

  search = bm25_search(corpus, bm25_cfg)                     # or dense_search(corpus, dense_cfg, cache_dir)
  ranked = search(["a query", "a document's text"], k=20)    # doc ids, best first
  first_unexcluded(ranked, [{"d1"}, {"d7"}])                 # -> [(doc id | None, 1-based rank | None), ...]

Two uses (qgjax.jobs.negatives): a document's nearest other document (the document's own text
as the query, itself excluded), the negative of DPO-QG's contrastive prompt; and a training
query's best-ranked document not judged relevant to it (its relevant documents excluded), the
negative of a contrastive (document, negative, query) training triple.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

Search = Callable[[Sequence[str], int], list[list[str]]]   # (texts, k) -> doc ids per text, best first


def first_unexcluded(ranked: Sequence[Sequence[str]], exclude: Sequence[set[str]]
                     ) -> list[tuple[str | None, int | None]]:
  """Per query the first retrieved doc id not in its exclude set and its 1-based rank; (None, None)
  when all of its retrieved documents are excluded."""
  out = []
  for ids, skip in zip(ranked, exclude, strict=True):
    hit = next(((d, r) for r, d in enumerate(ids, 1) if d not in skip), (None, None))
    out.append(hit)
  return out


def bm25_search(corpus, bm25_cfg) -> Search:
  """BM25 over `corpus` with a `default_bm25_config()`-shaped group."""
  from qgjax.retrieval.bm25 import open_bm25_from_config

  retriever = open_bm25_from_config(corpus, bm25_cfg)
  return lambda texts, k: retriever.search(list(texts), k=k).doc_ids


def dense_search(corpus, dense_cfg, cache_dir: str) -> Search:
  """Dense retrieval over `corpus`: `dense_cfg.model` encodes the corpus once into a store under
  `cache_dir` (shared with score / mine / evaluate when it is theirs), exact or ScaNN index."""
  import numpy as np

  from qgjax.retrieval.dense import (DenseEncoder, build_index, corpus_store_dir, embed_corpus, search_run,
                                     tower_dirs)

  q_model, d_model = tower_dirs(dense_cfg.model)
  q_enc = DenseEncoder.load(q_model)
  d_enc = q_enc if d_model == q_model else DenseEncoder.load(d_model)
  max_len = int(dense_cfg.max_len)
  store = corpus_store_dir(cache_dir, str(corpus.path), d_enc, max_len)
  ids, emb = embed_corpus(str(corpus.path), store, d_enc, batch_size=int(dense_cfg.batch_size), max_len=max_len,
                          corpus=corpus)
  index = build_index(emb, dense_cfg.index.to_dict())

  def search(texts, k):
    q = q_enc.encode_queries(list(texts), batch_size=int(dense_cfg.batch_size), max_len=int(dense_cfg.query_max_len))
    keys = [str(i) for i in range(len(texts))]
    run = search_run(index, ids, np.asarray(q), k, keys)
    return [sorted(run[key], key=lambda d: (-run[key][d], d)) for key in keys]
  return search


def searcher(method: str, corpus, config, cache_dir: str) -> Search:
  """`method` "bm25" (config.bm25) or "dense" (config.dense) over `corpus`."""
  from qgjax.errors import ConfigError

  if method == "bm25":
    return bm25_search(corpus, config.bm25)
  if method == "dense":
    return dense_search(corpus, config.dense, cache_dir or os.path.join(config.workdir, "dense_cache"))
  raise ConfigError(f"negatives.method must be bm25 or dense; got {method!r}")
