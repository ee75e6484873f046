"""`qgjax evaluate` system `aqe`: BM25 over query + expansion (Aligned Query Expansion at test time).

  qgjax evaluate --config configs/evaluate.py --config.retriever=aqe --config.aqe.input=runs/x/generate

`config.aqe.input` holds expansion records {query_id, expansion, ...} (a generate output with
one sample per query, or the select stage's selected.jsonl); each judged query is searched with
`qgjax.rewards.base.aqe_text(query, expansion, aqe.query_repeats)`, the text the AQE reward
scored (`aqe.query_repeats_file`, a tune_repeats output, replaces the count). A query without a
record is searched with its own text (counted in a warning); two records for one query are an error,
unless `aqe.join_samples` = n > 0: then each query's first n sampled expansions (lowest sample_idx
first) are joined into one text (`qgjax.methods.aqe.repeats.joined_expansions`).
"""

from __future__ import annotations

import logging
from typing import Any

from qgjax.data.records import iter_records
from qgjax.errors import ConfigError, InputError
from qgjax.methods.aqe.repeats import joined_expansions, resolve_query_repeats
from qgjax.rewards.base import aqe_text

log = logging.getLogger(__name__)


def load_expansions(source: str, join_samples: int = 0) -> dict[str, str]:
  """query id -> its expansion text: the one record per query, or its first `join_samples` joined."""
  if join_samples < 0:
    raise ConfigError(f"aqe.join_samples must be >= 0 (0 = one expansion record per query); got {join_samples}")
  if join_samples:
    return {q: rows[0][1] for q, rows in joined_expansions(source, join_samples).items()}
  out: dict[str, str] = {}
  for path, line, rec in iter_records(source):
    qid, text = rec.get("query_id"), rec.get("expansion")
    if qid is None or not isinstance(text, str):
      raise InputError("expected {query_id, expansion}", path=path, line=line, field="expansion")
    if str(qid) in out:
      raise InputError(f"a second expansion for query '{qid}' (keep one per query: greedy decoding or "
                       "the select stage)", path=path, line=line, field="query_id")
    out[str(qid)] = text
  return out


def evaluation_run(config: Any, data, queries: dict[str, str], previous):
  from qgjax.retrieval.bm25 import bm25_run

  cfg = config.aqe
  if not cfg.input:
    raise ConfigError("the aqe stage needs config.aqe.input (expansion records)")
  expansions = load_expansions(cfg.input, int(cfg.get("join_samples", 0)))
  missing = [q for q in queries if q not in expansions]
  if missing:
    log.warning("aqe: %d of %d queries have no expansion in %s (e.g. %s); searched with the query alone",
                len(missing), len(queries), cfg.input, missing[:3])
  repeats = resolve_query_repeats(cfg)
  texts = {q: aqe_text(t, expansions[q], repeats) if q in expansions else t
           for q, t in queries.items()}
  return bm25_run(config, data, texts, previous)
