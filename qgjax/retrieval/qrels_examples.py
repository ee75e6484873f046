"""Reranker training examples from a BEIR split's qrels: (query, judged-relevant document, BM25 negatives).

  examples = qrels_examples("data/nfcorpus", "train", min_relevance=1, negatives=1, depth=30, seed=0)
  # -> [QrelsExample(query_id, query, doc_id, negative_ids), ...] in qrels order

Every judgement (q, d, grade) of `<data_dir>/qrels/<split>.tsv` with grade >= `min_relevance` is one
example. Its negatives are `negatives` documents drawn without replacement from the query's `depth`
best BM25 documents (over the whole corpus, query text as the query) that are not judged relevant to
it at any grade >= 1; the draw comes from a generator seeded by (seed, query id, doc id) only, so it
does not depend on the order, the sharding or the other examples, and is kept in BM25 rank order.
A query whose top documents are all judged relevant gets fewer (or no) negatives.

The query texts come from queries_<split>.jsonl (else queries.jsonl). A judgement naming a query
or a document that is not there is an `InputError` naming the qrels file and the id (training on a
text-less pair is never what was meant); a split without a qrels file names the splits there are.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Sequence

import numpy as np

from qgjax.data import storage
from qgjax.data.beir import Corpus, load_qrels, load_queries, queries_path
from qgjax.errors import ConfigError, InputError
from qgjax.retrieval.mining import example_rng


@dataclasses.dataclass(frozen=True)
class QrelsExample:
  query_id: str
  query: str
  doc_id: str                      # a document judged relevant to the query (grade >= min_relevance)
  negative_ids: tuple[str, ...]    # BM25 hard negatives, best-ranked first


@dataclasses.dataclass
class JudgedSplit:
  """A split's qrels with the texts they need: queries {id: text}, qrels {query id: {doc id: grade}}."""
  corpus: Corpus
  queries: dict[str, str]
  qrels: dict[str, dict[str, int]]
  qrels_path: pathlib.Path


def load_judged_split(data_dir: str | os.PathLike, split: str, corpus: Corpus | None = None) -> JudgedSplit:
  """Opens `<data_dir>/qrels/<split>.tsv` and the queries and corpus it names; every id must resolve."""
  root = storage.as_path(data_dir)   # a gs:// URL: its epath.Path (a prefix with objects is a directory)
  if not root.is_dir():
    raise InputError("BEIR data directory not found", path=str(root))
  qrels_file = root / "qrels" / f"{split}.tsv"
  if not qrels_file.is_file():
    available = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
    raise InputError(f"no qrels for split '{split}' (available: {', '.join(available) or 'none'})",
                     path=str(qrels_file))
  corpus = corpus if corpus is not None else Corpus(root / "corpus.jsonl")
  q_file = queries_path(root, split)
  queries = load_queries(q_file)
  qrels = load_qrels(qrels_file)
  for qid, judged in qrels.items():
    if qid not in queries:
      raise InputError(f"query id {qid!r} is judged but has no text in {q_file}", path=str(qrels_file),
                       field="query-id")
    for did in judged:
      if did not in corpus:
        raise InputError(f"document id {did!r} (judged for query {qid!r}) is not in {corpus.path}",
                         path=str(qrels_file), field="corpus-id")
  return JudgedSplit(corpus, queries, qrels, qrels_file)


def sample_negatives(ranked: Sequence[str], judged: set[str], *, depth: int, count: int,
                     rng: np.random.Generator) -> tuple[str, ...]:
  """`count` of the first `depth` ids of `ranked` (best first) not in `judged`, drawn without
  replacement by `rng` and returned in rank order (all of them when there are at most `count`)."""
  pool = [d for d in ranked if d not in judged][:depth]
  if len(pool) <= count:
    return tuple(pool)
  picked = np.sort(rng.choice(len(pool), size=count, replace=False))
  return tuple(pool[i] for i in picked)


def qrels_examples(data_dir: str | os.PathLike, split: str, *, min_relevance: int = 1, negatives: int = 1,
                   depth: int = 30, seed: int = 0, bm25=None, corpus: Corpus | None = None) -> list[QrelsExample]:
  """The examples of the module docstring. `bm25`: a `default_bm25_config()`-shaped group (None: the
  defaults); `corpus`: an already opened corpus of `data_dir` (else it is opened here)."""
  from qgjax.retrieval.bm25 import default_bm25_config, open_bm25_from_config

  if int(min_relevance) < 1:
    raise ConfigError(f"min_relevance must be >= 1 (a judged-relevant grade); got {min_relevance}")
  if int(negatives) < 0 or int(depth) < int(negatives):
    raise ConfigError(f"need 0 <= negatives <= depth; got negatives={negatives}, depth={depth}")
  split_data = load_judged_split(data_dir, split, corpus)
  positives = [(q, d) for q, judged in split_data.qrels.items() for d, g in judged.items() if g >= int(min_relevance)]
  if not positives:
    raise InputError(f"no judgement with grade >= {min_relevance}", path=str(split_data.qrels_path))
  relevant = {q: {d for d, g in judged.items() if g >= 1} for q, judged in split_data.qrels.items()}
  qids = list(dict.fromkeys(q for q, _ in positives))
  ranked: dict[str, list[str]] = {q: [] for q in qids}
  if int(negatives) > 0:
    retriever = open_bm25_from_config(split_data.corpus, bm25 if bm25 is not None else default_bm25_config())
    k = min(len(split_data.corpus), int(depth) + max(len(relevant[q]) for q in qids))
    hits = retriever.search([split_data.queries[q] for q in qids], k=k).doc_ids
    ranked = dict(zip(qids, hits))
  return [QrelsExample(q, split_data.queries[q], d,
                       sample_negatives(ranked[q], relevant[q], depth=int(depth), count=int(negatives),
                                        rng=example_rng(int(seed), f"{q}\t{d}")))
          for q, d in positives]
