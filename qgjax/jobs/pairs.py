r"""`qgjax pairs`: preference pairs and best-of-n sets from the score stage's output.

  qgjax pairs --config configs/pairs.py:tiny
  qgjax pairs --config configs/pairs.py --config.input=runs/nfcorpus/score/scored \
      --config.workdir=runs/nfcorpus/pairs

Outputs in `config.workdir` (each written to a temp file and renamed):
  pairs.jsonl   QG:  {doc_id, chosen, rejected, reward_chosen, reward_rejected,
                      sample_idx_chosen, sample_idx_rejected, rewards_chosen, rewards_rejected,
                      logprob_chosen?, logprob_rejected?, reward_name}
                AQE: {query_id, source_query, chosen, rejected, ...} (chosen/rejected are expansions)
  rsft.jsonl    QG:  {doc_id, query, reward, sample_idx, rewards, logprob?}
                AQE: {query_id, source_query, completion, reward, sample_idx, rewards}
  summary.json  counts, mean rewards of chosen / rejected / best-of-n, settings, input fingerprint
Running again with the same input and settings does nothing; with different ones it refuses
to replace the outputs unless `overwrite=true`.

Copy guard (QG only; `chosen_max_copied_span` > 0, `data_dir` the corpus): a query that repeats more
than that many consecutive words of its source document (`longest_copied_span`) is never a chosen
or best-of-n query, only a rejected one, so alignment cannot reach a rank reward by copying the
document (what the BM25-rank reward taught SmolLM2 on NFCorpus: docs/results.md).

On P processes process 0 alone makes and writes the pairs (a pass over the scored records, no
model); the others return at once and wait at the pipeline's barrier after the stage.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from qgjax.data import storage
from qgjax.config import require
from qgjax.data.records import fingerprint, iter_records
from qgjax.data.safe_files import write_json_atomic
from qgjax.errors import ConfigError, InputError
from qgjax.preference.pairs import STRATEGIES, Candidate, best_of_n, make_pairs


def _reward_of(record: dict, name: str, path: str, line: int) -> float:
  value = record.get(name) if name == "reward" else record.get("rewards", {}).get(name)
  if value is None:
    have = ", ".join(["reward"] * ("reward" in record) + sorted(record.get("rewards", {})))
    raise InputError(f"record has no reward '{name}' (has: {have or 'none'}); run `qgjax score` "
                     "first or set config.reward", path=path, line=line, field=name)
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise InputError(f"reward must be a number, got {value!r}", path=path, line=line, field=name) from None
  if not np.isfinite(value):
    raise InputError(f"reward is not finite: {value}", path=path, line=line, field=name)
  return value


def load_groups(source: str, reward: str) -> tuple[str, dict[str, list[Candidate]], dict[str, str]]:
  """Scored records -> (mode, {group id: candidates}, {group id: AQE source query | the document's
  contrastive-prompt negative_id})."""
  groups: dict[str, list[Candidate]] = {}
  sources: dict[str, str] = {}
  mode = None
  for path, line, rec in iter_records(source):
    rec_mode = "aqe" if "expansion" in rec and "query_id" in rec else "qg"
    if mode is None:
      mode = rec_mode
    elif rec_mode != mode:
      raise InputError(f"a {rec_mode} record among {mode} records", path=path, line=line)
    field = "expansion" if mode == "aqe" else "query"
    group = str(rec.get("query_id" if mode == "aqe" else "doc_id", ""))
    if not group:
      raise InputError("missing", path=path, line=line, field="query_id" if mode == "aqe" else "doc_id")
    text = rec.get(field)
    if not isinstance(text, str) or not text.strip():
      raise InputError("missing or empty", path=path, line=line, field=field)
    if "sample_idx" not in rec:
      raise InputError("missing", path=path, line=line, field="sample_idx")
    try:
      idx = int(rec["sample_idx"])
    except (TypeError, ValueError):
      raise InputError(f"must be an integer, got {rec['sample_idx']!r}", path=path, line=line,
                       field="sample_idx") from None
    groups.setdefault(group, []).append(Candidate(idx, text, _reward_of(rec, reward, path, line), rec))
    if mode == "aqe" and "query" in rec:
      sources[group] = rec["query"]
    elif mode == "qg" and "negative_id" in rec:   # contrastive prompts: the pairs keep their negative
      negative = str(rec["negative_id"])
      if sources.setdefault(group, negative) != negative:
        raise InputError(f"document '{group}' has samples with different negative_id ({sources[group]!r}, "
                         f"{negative!r}); one generation run gives every sample of a document the same",
                         path=path, line=line, field="negative_id")
  if mode is None:
    raise InputError("no records", path=str(source))
  for cands in groups.values():
    cands.sort(key=lambda c: c.sample_idx)
  return mode, groups, sources


def copy_guard(config: Any, mode: str, groups: dict[str, list[Candidate]]):
  """(can_choose or None, number of candidates it refuses) for `chosen_max_copied_span`."""
  limit = int(config.chosen_max_copied_span)
  if limit <= 0:
    return None, 0
  if mode != "qg":
    raise ConfigError("config.chosen_max_copied_span compares a query with its source document: generated "
                      "queries only, not AQE expansions")
  if not config.data_dir:
    raise ConfigError("config.chosen_max_copied_span needs config.data_dir: the corpus the queries were generated from")
  from qgjax.data.beir import Corpus
  from qgjax.evaluation.query_quality import longest_copied_span, text_words

  corpus = Corpus(str(storage.as_path(config.data_dir) / "corpus.jsonl"))
  refused = set()
  for group, cands in groups.items():
    if group not in corpus:
      raise InputError(f"document '{group}' of the scored queries is not in {config.data_dir}", field="doc_id")
    doc = text_words(corpus[group].contents)
    refused |= {(group, c.sample_idx) for c in cands if longest_copied_span(text_words(c.text), doc) > limit}
  return (lambda c: (str(c.record["doc_id"]), c.sample_idx) not in refused), len(refused)


def _group_fields(mode: str, group: str, sources: dict[str, str]) -> dict:
  if mode == "aqe":
    return {"query_id": group, **({"source_query": sources[group]} if group in sources else {})}
  return {"doc_id": group, **({"negative_id": sources[group]} if group in sources else {})}


def pair_record(mode, group, sources, chosen: Candidate, rejected: Candidate, reward: str) -> dict:
  out = _group_fields(mode, group, sources)
  out.update(chosen=chosen.text, rejected=rejected.text, reward_chosen=chosen.reward,
             reward_rejected=rejected.reward, sample_idx_chosen=chosen.sample_idx,
             sample_idx_rejected=rejected.sample_idx,
             rewards_chosen=chosen.record.get("rewards", {}),
             rewards_rejected=rejected.record.get("rewards", {}), reward_name=reward)
  if "logprob" in chosen.record and "logprob" in rejected.record:
    out.update(logprob_chosen=chosen.record["logprob"], logprob_rejected=rejected.record["logprob"])
  return out


def rsft_record(mode, group, sources, cand: Candidate, reward: str) -> dict:
  out = _group_fields(mode, group, sources)
  out["completion" if mode == "aqe" else "query"] = cand.text
  out.update(reward=cand.reward, sample_idx=cand.sample_idx, rewards=cand.record.get("rewards", {}),
             reward_name=reward)
  if "logprob" in cand.record:
    out["logprob"] = cand.record["logprob"]
  return out


def _write_jsonl(path: pathlib.Path, records: list[dict]) -> None:
  """All of `records` as one JSONL file, atomically (temp + rename; on gs:// one upload)."""
  storage.write_bytes_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))


def _mean(values) -> float | None:
  return float(np.mean(values)) if len(values) else None


def run(config: Any) -> dict:
  """Holds `config.workdir`'s one-writer lock (`qgjax.data.workdir_lock`) for the whole job."""
  from qgjax.data.workdir_lock import lock_workdir
  from qgjax.parallel.distributed import is_main_process

  require(config, "workdir")
  if not is_main_process():
    return {"pairs_file": str(pathlib.Path(config.workdir) / "pairs.jsonl"), "written_by": "process 0"}
  with lock_workdir(config.workdir, "pairs"):
    return _run(config)


def _run(config: Any) -> dict:
  require(config, "input", "workdir", "reward", "strategy")
  if config.strategy not in STRATEGIES:
    raise ConfigError(f"unknown config.strategy '{config.strategy}'; choose one of {', '.join(STRATEGIES)}")
  if config.margin < 0:
    raise ConfigError(f"config.margin must be >= 0, got {config.margin}")
  if int(config.rsft.n_best) < 1:
    raise ConfigError(f"config.rsft.n_best must be >= 1, got {config.rsft.n_best}")
  workdir = storage.as_path(config.workdir)
  settings = {"input": storage.resolved(config.input),
              "input_fingerprint": fingerprint(config.input), "reward": config.reward,
              "strategy": config.strategy, "margin": float(config.margin),
              "max_pairs_per_doc": int(config.max_pairs_per_doc), "rsft": config.rsft.to_dict()}
  if int(config.chosen_max_copied_span) > 0:   # (absent when off: outputs made before the guard stay valid)
    settings["chosen_max_copied_span"] = int(config.chosen_max_copied_span)
  summary_path = workdir / "summary.json"
  if summary_path.is_file():
    previous = json.loads(summary_path.read_text())
    if previous.get("settings") == settings:
      return dict(previous, skipped="outputs are up to date")
    if not config.overwrite:
      changed = sorted(k for k in settings if previous.get("settings", {}).get(k) != settings[k])
      raise ConfigError(f"{workdir} holds pairs made from other settings or input "
                        f"({', '.join(changed)} changed); use another workdir or --config.overwrite=true")

  mode, groups, sources = load_groups(config.input, config.reward)
  can_choose, refused = copy_guard(config, mode, groups)
  pairs, rsft = [], []
  for group, cands in groups.items():
    for chosen, rejected in make_pairs(cands, config.strategy, float(config.margin),
                                       int(config.max_pairs_per_doc), can_choose):
      pairs.append(pair_record(mode, group, sources, chosen, rejected, config.reward))
    for cand in best_of_n(cands, int(config.rsft.n_best), config.rsft.min_reward, can_choose):
      rsft.append(rsft_record(mode, group, sources, cand, config.reward))

  workdir.mkdir(parents=True, exist_ok=True)
  _write_jsonl(workdir / "pairs.jsonl", pairs)
  _write_jsonl(workdir / "rsft.jsonl", rsft)
  all_rewards = [c.reward for cands in groups.values() for c in cands]
  summary = {
      "mode": mode, "groups": len(groups), "candidates": len(all_rewards), "pairs": len(pairs),
      "groups_with_pairs": len({p.get("doc_id", p.get("query_id")) for p in pairs}),
      "rsft": len(rsft), "mean_reward": _mean(all_rewards),
      "mean_reward_chosen": _mean([p["reward_chosen"] for p in pairs]),
      "mean_reward_rejected": _mean([p["reward_rejected"] for p in pairs]),
      "mean_reward_best_of_n": _mean([r["reward"] for r in rsft]),
      "pairs_file": str(workdir / "pairs.jsonl"), "rsft_file": str(workdir / "rsft.jsonl"),
      **({"refused_as_chosen": refused} if can_choose is not None else {}),
      "settings": settings,
  }
  write_json_atomic(summary_path, summary, sort_keys=False)
  return summary
