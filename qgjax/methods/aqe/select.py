r"""`select`: best of N expansions per query by a test-time criterion that never sees qrels.

  qgjax pipeline --config configs/aqe.py:tiny      # runs this as the `select` stage

This is the costly "generate-then-filter" baseline AQE removes: sample N expansions per test
query, keep one. (AQE's paper compares with EAR, whose filter is a trained query re-ranker; that
needs training data of its own, so here the filter is one of two unsupervised criteria:)
  consensus    the expansion whose terms agree most with the other N-1: mean Jaccard overlap of
               its lower-cased word set with each other expansion's (self-consistency)
  likelihood   the highest mean token log-prob under the generator (logprob / num_tokens)
Ties go to the lowest sample_idx. Input: the generate stage's expansion records; output:
<workdir>/selected.jsonl, one {query_id, query, expansion, sample_idx, criterion, score,
candidates} per query, and summary.json. On P processes process 0 alone selects and writes
(a pass over the records, no model); the others wait at the pipeline's barrier after the stage.
"""

from __future__ import annotations

import json
import re

from qgjax.config import require
from qgjax.data import storage
from qgjax.data.records import iter_records
from qgjax.data.safe_files import ensure_dir, write_json_atomic
from qgjax.errors import ConfigError, InputError

CRITERIA = ("consensus", "likelihood")


def _words(text: str) -> frozenset[str]:
  return frozenset(re.findall(r"\w+", text.lower()))


def consensus_scores(texts: list[str]) -> list[float]:
  """Mean Jaccard overlap of each text's word set with every other text's ([0, 1]; 0 for N=1)."""
  sets = [_words(t) for t in texts]
  out = []
  for i, a in enumerate(sets):
    sims = [len(a & b) / len(a | b) if a | b else 0.0 for j, b in enumerate(sets) if j != i]
    out.append(sum(sims) / len(sims) if sims else 0.0)
  return out


def likelihood_scores(records: list[dict]) -> list[float]:
  return [float(r["logprob"]) / max(int(r["num_tokens"]), 1) for r in records]


def run(config) -> dict:
  from qgjax.parallel.distributed import is_main_process

  require(config, "input", "workdir", "criterion")
  if not is_main_process():
    return {"selected": str(storage.as_path(config.workdir) / "selected.jsonl"), "written_by": "process 0"}
  if config.criterion not in CRITERIA:
    raise ConfigError(f"select.criterion must be one of {', '.join(CRITERIA)}; got {config.criterion!r}")
  groups: dict[str, list[dict]] = {}
  for path, line, rec in iter_records(config.input):
    for field in ("query_id", "expansion", "sample_idx") + (("logprob", "num_tokens")
                                                           if config.criterion == "likelihood" else ()):
      if field not in rec:
        raise InputError("missing (expected the generate stage's expansion records)", path=path, line=line,
                         field=field)
    groups.setdefault(str(rec["query_id"]), []).append(rec)
  if not groups:
    raise InputError("no expansion records", path=str(config.input))
  out, sizes = [], []
  for qid, recs in groups.items():
    recs.sort(key=lambda r: int(r["sample_idx"]))
    scores = (consensus_scores([r["expansion"] for r in recs]) if config.criterion == "consensus"
              else likelihood_scores(recs))
    best = max(range(len(recs)), key=lambda i: (scores[i], -i))
    r = recs[best]
    out.append({"query_id": qid, "query": r.get("query", ""), "expansion": r["expansion"],
                "sample_idx": int(r["sample_idx"]), "criterion": config.criterion,
                "score": round(scores[best], 6), "candidates": len(recs)})
    sizes.append(len(recs))
  workdir = ensure_dir(config.workdir, what="select workdir")   # a gs:// URL: its epath.Path
  storage.write_bytes_atomic(workdir / "selected.jsonl",   # temp + rename; gs://: one upload
                             "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out).encode("utf-8"))
  summary = {"queries": len(out), "criterion": config.criterion, "mean_candidates": sum(sizes) / len(sizes),
             "selected": str(workdir / "selected.jsonl")}
  write_json_atomic(workdir / "summary.json", summary, sort_keys=False)
  return summary
