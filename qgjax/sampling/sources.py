"""Inputs of generation jobs: a corpus named by path, and its documents as a stream of entries.

  corpus = open_corpus("data/nfcorpus")           # a BEIR directory, a corpus.jsonl or tfds:<dir>[:split]
  total, docs = document_entries(corpus, offset=0, limit=100)   # the selected documents, in corpus order
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable

from qgjax.data import storage
from qgjax.errors import InputError


def open_corpus(path: str):
  """A BEIR corpus (directory or corpus.jsonl) or a prepared TFDS dataset (`tfds:<builder_dir>[:split]`)."""
  from qgjax.data.beir import Corpus

  if str(path).startswith("tfds:"):
    from qgjax.data.tfds_source import TfdsCorpus
    return TfdsCorpus.from_spec(str(path))
  p = storage.as_path(path)
  if p.is_dir():
    p = p / "corpus.jsonl"
  if not p.is_file():
    raise InputError("corpus not found (a BEIR directory or a corpus.jsonl)", path=str(p))
  return Corpus(p)


def document_entries(corpus: Any, offset: int = 0, limit: int = 0) -> tuple[int, Iterable[Any]]:
  """(count, documents offset .. offset + count - 1 of `corpus` in its order); limit 0 = to the end.
  The documents can be iterated more than once (each pass reads the corpus again)."""
  available = max(len(corpus) - offset, 0)
  total = min(available, limit) if limit else available
  return total, _Slice(corpus, offset, offset + total)


class _Slice:
  """Documents start .. stop - 1 of a corpus, iterable more than once."""

  def __init__(self, corpus: Any, start: int, stop: int):
    self.corpus, self.start, self.stop = corpus, start, stop

  def __iter__(self):
    return itertools.islice(iter(self.corpus), self.start, self.stop)
