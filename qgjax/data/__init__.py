"""qgjax.data: BEIR readers, sharded resumable JSONL output, progress bars, the demo corpus."""

from __future__ import annotations

import pathlib


def demo_dir() -> pathlib.Path:
  """The small BEIR-layout demo corpus shipped with qgjax.

  corpus.jsonl (52 documents), queries.jsonl (28 queries), qrels/test.tsv, and
  sample_queries.jsonl: 4 hand-written queries for each of 10 documents, of mixed quality, in
  the record format of the generate stage (doc_id, sample_idx, query) for the score/pairs demos.
  """
  return pathlib.Path(__file__).resolve().parent / "demo"
