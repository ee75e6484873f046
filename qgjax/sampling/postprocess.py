"""Cleaning generated queries: strip, cut at a newline, drop empty and copied outputs, dedup.

  clean_text("Query: \"statins and cancer\"\\nmore", config) -> "statins and cancer"
  is_copied(query, document, min_words)                       -> True when the query is a verbatim
                                                                 span (>= min_words words) of the document
  select(candidates, document, config) -> the kept candidates of one document (dedup keeps the
                                          highest log-prob copy, order by sample index)

config group `postprocess` (see `default_postprocess_config`).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import ml_collections

_LABEL = re.compile(r"^\s*(?:search\s+)?(?:query|question|expansion|passage|answer)\s*[:\-]\s*", re.IGNORECASE)
_QUOTES = "\"'`“”‘’«»"


def default_postprocess_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.cut_at_newline = True       # keep the first non-empty line
  c.strip_label = True          # drop a leading "Query:" / "Search query:" label and wrapping quotes
  c.drop_empty = True
  c.drop_copied = True          # drop outputs that are a verbatim span of the document ...
  c.copy_min_words = 6          # ... of at least this many words
  c.dedup = True                # one copy per distinct (case/space-normalised) text per document
  c.min_chars = 3
  return c


def normalise(text: str) -> str:
  """Lower case, punctuation to spaces, single spaces: the form compared by dedup/copy checks."""
  return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def clean_text(text: str, config: ml_collections.ConfigDict) -> str:
  """Raw decoded generation -> the query string (may be empty)."""
  text = text.strip()
  if config.cut_at_newline:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    text = lines[0] if lines else ""
  if config.strip_label:
    text = _LABEL.sub("", text, count=1).strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
      text = text[1:-1].strip()
  return text


def is_copied(query: str, document: str, min_words: int) -> bool:
  """True when the normalised query has >= min_words words and occurs verbatim in the document."""
  q = normalise(query)
  if len(q.split()) < min_words:
    return False
  return f" {q} " in f" {normalise(document)} "


def select(candidates: Sequence[dict[str, Any]], document: str | None,
           config: ml_collections.ConfigDict, text_field: str = "query") -> list[dict[str, Any]]:
  """Filters one document's candidates (dicts with `text_field`, "logprob", "sample_idx").

  `text_field` must already hold cleaned text. Returns the kept candidates in sample order;
  among duplicates the one with the highest log-prob is kept.
  """
  kept: dict[str, dict[str, Any]] = {}
  order: list[str] = []
  for i, cand in enumerate(candidates):
    text = cand[text_field]
    if config.drop_empty and len(text.strip()) < max(1, config.min_chars):
      continue
    if config.drop_copied and document is not None and is_copied(text, document, config.copy_min_words):
      continue
    key = normalise(text) if config.dedup else str(i)
    if key in kept:
      if cand["logprob"] > kept[key]["logprob"]:
        kept[key] = cand
      continue
    kept[key] = cand
    order.append(key)
  return sorted((kept[k] for k in order), key=lambda c: c["sample_idx"])
