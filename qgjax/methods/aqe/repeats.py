r"""`tune_repeats`: how many times BM25 sees the query before its expansion, chosen on training queries.

  qgjax pipeline --config configs/aqe.py:tiny      # runs this as the `tune_repeats` stage

An expansion is many words and the query a few, so BM25 over `query + expansion` lets the expansion
outweigh the query; query2doc repeats the query five times. The right weight depends on the
collection and the generator, so it is chosen here, on training queries only: for each k in
`candidates`, each training query's first `samples_per_query` sampled expansions (the generate_train
records, lowest sample_idx first) are searched as `aqe_text(query, expansion, k)`; `measure` is
averaged over a query's samples, then over the queries judged in `<data_dir>/qrels/<split>.tsv`. The
best k wins (ties: the smaller). The query alone is measured too, for the record. With `join_samples`
= n > 0 each query's first n expansions are joined into one (`joined_expansions`) and searched once:
the joined text is ~n times longer, so its k is ~n times larger (give candidates to match).

Output <workdir>/repeats.json: {query_repeats, measure, by_repeats {k: value}, query_only, queries,
samples_per_query, candidates}. The recipe's later stages read `query_repeats` from it at run time
(`aqe.query_repeats_file` of score and evaluate: `resolve_query_repeats`), so the reward that aligns
the generator and the test-time search use the same weighting. On P processes process 0 alone
searches and writes (BM25 only, no model); the others wait at the pipeline's barrier.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping

from qgjax.config import require
from qgjax.data import storage
from qgjax.data.records import iter_records
from qgjax.data.safe_files import ensure_dir, write_json_atomic
from qgjax.errors import ConfigError, InputError

log = logging.getLogger(__name__)
OUTPUT = "repeats.json"


def resolve_query_repeats(aqe: Mapping[str, Any]) -> int:
  """The query repeat count of an `aqe` config group: `query_repeats_file`'s chosen value when that
  is set (a tune_repeats output), else `query_repeats`."""
  path = str(aqe.get("query_repeats_file", "") or "")
  if not path:
    value, where = aqe.get("query_repeats", 1), "aqe.query_repeats"
  else:
    p = storage.as_path(path)
    if not p.exists():
      raise InputError("no such file (has the tune_repeats stage run?)", path=path, field="query_repeats")
    try:
      value = json.loads(p.read_text())["query_repeats"]
    except (ValueError, KeyError, TypeError) as e:
      raise InputError(f"expected a JSON object with query_repeats ({e})", path=path, field="query_repeats")
    where = path
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ConfigError(f"query_repeats must be an integer >= 1; {where} gives {value!r}")
  return value


def sampled_expansions(source: str, samples_per_query: int) -> dict[str, list[tuple[int, str, str | None]]]:
  """query id -> its first `samples_per_query` (sample_idx, expansion, query text or None)."""
  out: dict[str, list[tuple[int, str, str | None]]] = {}
  for path, line, rec in iter_records(source):
    qid, text, idx = rec.get("query_id"), rec.get("expansion"), rec.get("sample_idx")
    if qid is None or not isinstance(text, str) or isinstance(idx, bool) or not isinstance(idx, int):
      raise InputError("expected {query_id, expansion, sample_idx}", path=path, line=line, field="expansion")
    query = rec.get("query")
    out.setdefault(str(qid), []).append((idx, text, query if isinstance(query, str) else None))
  if not out:
    raise InputError("no expansion records", path=source)
  return {q: sorted(v, key=lambda row: row[0])[:samples_per_query] for q, v in out.items()}


def joined_expansions(source: str, n: int) -> dict[str, list[tuple[int, str, str | None]]]:
  """query id -> one row (0, its first `n` expansions joined, lowest sample_idx first, one space apart,
  query text or None): the multi-sample expansion of query2doc-style methods (MuGI), searched once."""
  return {q: [(0, " ".join(text for _, text, _ in rows), rows[0][2])]
          for q, rows in sampled_expansions(source, n).items()}


def search_measure(retriever: Any, searches: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]],
                   measure: str, depth: int) -> dict[str, float]:
  """`measure` of each search: keys "<query id>\t<anything>" -> BM25 text; each is judged by its query's
  qrels -> {key: value}."""
  from qgjax.evaluation.ir_metrics import evaluate_per_query

  keys = list(searches)
  run = retriever.search([searches[k] for k in keys], k=depth).as_run(keys)
  per = evaluate_per_query(run, {k: qrels[k.split("\t", 1)[0]] for k in keys}, [measure])
  return {k: v[measure] for k, v in per.items()}


def run(config) -> dict:
  from qgjax.data.beir import Corpus, load_qrels, load_queries, queries_path
  from qgjax.evaluation.ir_metrics import parse_measure
  from qgjax.parallel.distributed import is_main_process
  from qgjax.retrieval.bm25 import open_bm25_from_config
  from qgjax.rewards.base import aqe_text

  require(config, "input", "data_dir", "workdir", "split", "candidates", "measure")
  out_dir = storage.as_path(config.workdir)
  if not is_main_process():
    return {"repeats": str(out_dir / OUTPUT), "written_by": "process 0"}
  candidates = sorted({int(k) for k in config.candidates})
  if not candidates or candidates[0] < 1:
    raise ConfigError(f"tune_repeats.candidates must be integers >= 1; got {list(config.candidates)}")
  samples = int(config.samples_per_query)
  if samples < 1:
    raise ConfigError(f"tune_repeats.samples_per_query must be >= 1; got {samples}")
  join = int(config.get("join_samples", 0))
  if join < 0:
    raise ConfigError(f"tune_repeats.join_samples must be >= 0 (0 = search each sample apart); got {join}")
  parse_measure(config.measure)
  data_dir = storage.as_path(config.data_dir)
  corpus = Corpus(data_dir / "corpus.jsonl")
  qrels = load_qrels(data_dir / "qrels" / f"{config.split}.tsv", doc_ids=corpus, min_grade=1)
  expansions = joined_expansions(config.input, join) if join else sampled_expansions(config.input, samples)
  unknown = sorted(set(expansions) - set(qrels))
  if unknown:
    raise InputError(f"{len(unknown)} expansion queries are not judged in qrels/{config.split}.tsv "
                     f"(e.g. {unknown[0]!r}): wrong split?", path=str(config.input), field="query_id")
  if any(query is None for rows in expansions.values() for _, _, query in rows):
    texts = load_queries(queries_path(data_dir, config.split))
  else:
    texts = {}
  query_text = {q: rows[0][2] if rows[0][2] is not None else texts.get(q) for q, rows in expansions.items()}
  missing = [q for q, t in query_text.items() if not t]
  if missing:
    raise InputError(f"query {missing[0]!r} has no text in the records or the query file", path=str(config.input),
                     field="query")
  judged = {q: qrels[q] for q in expansions}
  retriever = open_bm25_from_config(corpus, config.bm25)
  depth = int(config.depth)

  def mean_measure(searches: dict[str, str]) -> float:
    by_query: dict[str, list[float]] = {}
    for k, v in search_measure(retriever, searches, judged, config.measure, depth).items():
      by_query.setdefault(k.split("\t", 1)[0], []).append(v)
    return sum(sum(v) / len(v) for v in by_query.values()) / len(by_query)

  by_repeats = {}
  for k in candidates:
    by_repeats[k] = mean_measure({f"{q}\t{i}": aqe_text(query_text[q], text, k)
                                  for q, rows in expansions.items() for i, text, _ in rows})
    log.info("tune_repeats: query x %d + expansion: %s %.4f over %d training queries", k, config.measure,
             by_repeats[k], len(expansions))
  query_only = mean_measure({f"{q}\t-": t for q, t in query_text.items()})
  best = max(candidates, key=lambda k: (by_repeats[k], -k))
  result = {"query_repeats": best, "measure": config.measure,
            "by_repeats": {str(k): round(v, 6) for k, v in by_repeats.items()},
            "query_only": round(query_only, 6), "queries": len(expansions),
            "samples_per_query": 1 if join else samples, **({"join_samples": join} if join else {}),
            "candidates": candidates, "input": storage.absolute(str(config.input))}
  ensure_dir(out_dir)
  write_json_atomic(out_dir / OUTPUT, result)
  log.info("tune_repeats: query_repeats=%d (%s %.4f; the query alone %.4f)", best, config.measure,
           by_repeats[best], query_only)
  return dict(result, repeats=str(out_dir / OUTPUT))
