"""IR metrics with trec_eval semantics, and TREC run files.

A run is `{query_id: {doc_id: score}}`, qrels are `{query_id: {doc_id: grade}}` (ints).
Conventions follow trec_eval / pytrec_eval (and so `ir_measures`):

- ranking: score descending, ties broken by doc id descending (trec_eval's `strcmp` order);
- a document is relevant when its grade >= `min_rel` (1); nDCG gains are the grades
  themselves (linear, negative grades count 0), discount `1 / log2(rank + 1)`, and the ideal
  ranking sorts all judged grades of the query;
- the mean runs over every query in the qrels: a judged query missing from the run, or one
  with no relevant document, scores 0. Queries in the run but not in the qrels are ignored.

Measures are named as in `ir_measures`: `nDCG@k`, `RR@k` (alias `MRR@k`), `R@k` (recall),
`Success@k` (alias `Acc@k`, top-k accuracy: any relevant document in the top k), `P@k`.
"""

from __future__ import annotations

import math
import os
import re
from typing import Iterable, Mapping, Sequence

from qgjax.errors import InputError

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

_MEASURE_RE = re.compile(r"^(nDCG|RR|MRR|R|Recall|Success|Acc|P)@(\d+)$")
_CANONICAL = {"MRR": "RR", "Recall": "R", "Acc": "Success"}
DEFAULT_MEASURES = ("nDCG@10", "RR@10", "RR@100", "R@100", "R@1000", "Success@1", "Success@10")


def parse_measure(name: str) -> tuple[str, int]:
  """'nDCG@10' -> ('nDCG', 10); aliases MRR -> RR, Recall -> R, Acc -> Success."""
  m = _MEASURE_RE.match(name.strip())
  if not m or int(m.group(2)) < 1:
    raise InputError(f"unknown measure '{name}'; use nDCG@k, RR@k (MRR@k), R@k, Success@k "
                     "(Acc@k) or P@k with k >= 1", field="measures")
  return _CANONICAL.get(m.group(1), m.group(1)), int(m.group(2))


def rank_documents(scores: Mapping[str, float]) -> list[str]:
  """Doc ids by score descending, ties by doc id descending (as trec_eval)."""
  by_id = sorted(scores, reverse=True)
  return sorted(by_id, key=lambda d: -float(scores[d]))


def _dcg(gains: Iterable[float]) -> float:
  return sum(g / math.log2(i + 2) for i, g in enumerate(gains) if g > 0)


def query_measures(ranked: Sequence[str], judged: Mapping[str, int],
                   measures: Sequence[tuple[str, int]], min_rel: int = 1) -> list[float]:
  """Values of `measures` (parsed) for one query, given its ranked doc ids and judgements."""
  relevant = {d for d, g in judged.items() if g >= min_rel}
  out = []
  for kind, k in measures:
    top = ranked[:k]
    if not relevant:
      out.append(0.0)
    elif kind == "nDCG":
      ideal = _dcg(sorted((max(g, 0) for g in judged.values()), reverse=True)[:k])
      out.append(_dcg(max(judged.get(d, 0), 0) for d in top) / ideal if ideal > 0 else 0.0)
    elif kind == "RR":
      out.append(next((1.0 / (i + 1) for i, d in enumerate(top) if d in relevant), 0.0))
    elif kind == "R":
      out.append(sum(d in relevant for d in top) / len(relevant))
    elif kind == "Success":
      out.append(float(any(d in relevant for d in top)))
    elif kind == "P":
      out.append(sum(d in relevant for d in top) / k)
    else:
      raise AssertionError(kind)
  return out


def evaluate_per_query(run: Run, qrels: Qrels, measures: Sequence[str] = DEFAULT_MEASURES,
                       min_rel: int = 1) -> dict[str, dict[str, float]]:
  """{query_id: {measure: value}} for every query in `qrels`."""
  parsed = [parse_measure(m) for m in measures]
  out = {}
  for qid, judged in qrels.items():
    ranked = rank_documents(run.get(qid, {}))
    out[qid] = dict(zip(measures, query_measures(ranked, judged, parsed, min_rel)))
  return out


def evaluate(run: Run, qrels: Qrels, measures: Sequence[str] = DEFAULT_MEASURES,
             min_rel: int = 1) -> dict[str, float]:
  """{measure: mean over the queries of `qrels`}."""
  per_query = evaluate_per_query(run, qrels, measures, min_rel)
  n = max(len(per_query), 1)
  return {m: sum(v[m] for v in per_query.values()) / n for m in measures}


# -- TREC run files ------------------------------------------------------------------------------


def write_trec_run(path: str | os.PathLike, run: Run, tag: str = "qgjax") -> None:
  """Writes `qid Q0 docid rank score tag` lines, each query ranked as trec_eval ranks it.

  Scores are written with `repr`, so reading the file back gives the same floats and ranks.
  Written to a temp file and renamed, so an interrupted write leaves no partial run.
  """
  from qgjax.data import storage

  lines = []
  for qid in run:
    scores = run[qid]
    for rank, did in enumerate(rank_documents(scores), start=1):
      if any(c.isspace() for c in qid + did):
        raise InputError(f"ids in a TREC run cannot contain whitespace: {qid!r} / {did!r}")
      lines.append(f"{qid} Q0 {did} {rank} {float(scores[did])!r} {tag}\n")
  storage.write_bytes_atomic(path, "".join(lines).encode("utf-8"))   # temp + rename; gs://: one upload


def read_trec_run(path: str | os.PathLike) -> dict[str, dict[str, float]]:
  """Reads a TREC run file into `{qid: {docid: score}}`."""
  from qgjax.data import storage

  run: dict[str, dict[str, float]] = {}
  if not storage.as_path(path).is_file():   # a local file or a gs:// object
    raise InputError("run file not found", path=str(path))
  with storage.as_path(path).open(encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      cols = line.split()
      if not cols:
        continue
      if len(cols) != 6:
        raise InputError(f"expected 6 columns (qid Q0 docid rank score tag), got {len(cols)}",
                         path=str(path), line=line_no)
      qid, _, did, _, score, _ = cols
      try:
        value = float(score)
      except ValueError:
        raise InputError(f"score is not a number: {score!r}", path=str(path), line=line_no,
                         field="score") from None
      docs = run.setdefault(qid, {})
      if did in docs:
        raise InputError(f"document '{did}' appears twice for query '{qid}'", path=str(path),
                         line=line_no, field="docid")
      docs[did] = value
  return run


def format_table(rows: Mapping[str, Mapping[str, float]], measures: Sequence[str]) -> str:
  """A plain-text table: one row per system (name -> {measure: value}), 4 decimals."""
  name_width = max([len("system")] + [len(n) for n in rows])
  widths = [max(len(m), 6) for m in measures]
  head = "system".ljust(name_width) + "  " + "  ".join(m.rjust(w) for m, w in zip(measures, widths))
  lines = [head, "-" * len(head)]
  for name, values in rows.items():
    cells = [f"{values[m]:.4f}".rjust(w) if m in values else "-".rjust(w)
             for m, w in zip(measures, widths)]
    lines.append(name.ljust(name_width) + "  " + "  ".join(cells))
  return "\n".join(lines)
