"""qgjax.data: BEIR readers, sharded resumable JSONL output, progress bars, the demo corpus."""

from __future__ import annotations

import pathlib


def demo_dir() -> pathlib.Path:
  """The small BEIR-layout demo corpus shipped with qgjax (52 documents, 28 queries, test qrels)."""
  return pathlib.Path(__file__).resolve().parent / "demo"
