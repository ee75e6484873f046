r"""`qgjax score`: a reward for every generated query (or AQE expansion), resumable.

  qgjax score --config configs/score.py:tiny
  qgjax score --config configs/score.py --config.input=runs/nfcorpus/generate \
      --config.data_dir=../shared/data/nfcorpus --config.workdir=runs/nfcorpus/score

Reads the generate stage's records, scores them in batches with the rewards in
`config.rewards` (see qgjax.rewards) and writes <workdir>/scored as sharded JSONL: each input
record plus `rewards`, `ranks` and `reward`. Killed and run again, it continues where it
stopped. The summary gives each reward's mean and retention@k of each retriever.

On P processes (`jax.distributed`) process i scores the i-th contiguous block of the input's
records (`qgjax.data.records.process_block`; every process still checks every record) with its
own devices (`qgjax.parallel.data_parallel.process_local`) into <workdir>/scored/process-<i>;
readers take the parts in process order, which is the input's order. After a barrier each
process returns the summary of all parts.
"""

from __future__ import annotations

import contextlib
import pathlib
from typing import Any

import jax
import numpy as np

from qgjax.data import storage
from qgjax.config import require
from qgjax.data import demo_dir
from qgjax.data.beir import Corpus, load_qrels, load_queries, queries_path
from qgjax.data.progress import progress
from qgjax.data.records import UniqueKeys, batches, count_input, fingerprint, iter_records, part_dir, process_block
from qgjax.data.sharded_writer import ShardedJsonlWriter
from qgjax.errors import ConfigError, InputError
from qgjax.methods.aqe.repeats import resolve_query_repeats
from qgjax.parallel.backend import model_numerics
from qgjax.parallel.data_parallel import process_local
from qgjax.parallel.distributed import barrier
from qgjax.rewards import build_scorers
from qgjax.rewards.base import RewardBatch, RewardContext, aqe_text
from qgjax.rewards.retention import retention_at_k

QG_KEY = ("doc_id", "sample_idx")
AQE_KEY = ("query_id", "sample_idx")


def detect_mode(record: dict) -> str:
  """'aqe' for expansion records ({query_id, expansion, ...}), else 'qg' ({doc_id, query, ...})."""
  return "aqe" if "expansion" in record and "query_id" in record else "qg"


def _text(record: dict, field: str, path: str, line: int) -> str:
  value = record.get(field)
  if not isinstance(value, str) or not value.strip():
    raise InputError("missing or empty" if value is None or isinstance(value, str) else
                     f"must be a string, got {type(value).__name__}", path=path, line=line, field=field)
  return value


class Targets:
  """Record -> (text to score, target doc ids), validating against the corpus / qrels."""

  def __init__(self, mode: str, corpus: Corpus, config: Any, data_dir: pathlib.Path):
    self.mode, self.corpus, self.config = mode, corpus, config
    self.qrels = self.queries = None
    if mode == "aqe":
      qrels_file = data_dir / "qrels" / f"{config.split}.tsv"
      self.qrels = load_qrels(qrels_file, doc_ids=corpus, min_grade=1)
      self.qrels_file = qrels_file
      self.query_repeats = resolve_query_repeats(config.aqe)

  def __call__(self, record: dict, path: str, line: int) -> tuple[str, list[str]]:
    if "sample_idx" not in record:
      raise InputError("missing", path=path, line=line, field="sample_idx")
    if self.mode == "qg":
      doc_id = str(record.get("doc_id", ""))
      if not doc_id:
        raise InputError("missing", path=path, line=line, field="doc_id")
      if doc_id not in self.corpus:
        raise InputError(f"document '{doc_id}' is not in {self.corpus.path} (wrong data_dir?)",
                         path=path, line=line, field="doc_id")
      return _text(record, "query", path, line), [doc_id]
    qid = str(record["query_id"])
    if "query" in record:
      query = _text(record, "query", path, line)
    else:
      if self.queries is None:
        self.queries = load_queries(queries_path(self.corpus.path.parent, self.config.split))
      if qid not in self.queries:
        raise InputError(f"query '{qid}' has no text in the record or the query file", path=path,
                         line=line, field="query")
      query = self.queries[qid]
    gold = [d for d, g in self.qrels.get(qid, {}).items() if d in self.corpus]
    if not gold:
      raise InputError(f"query '{qid}' has no relevant document in {self.qrels_file}", path=path,
                       line=line, field="query_id")
    expansion = _text(record, "expansion", path, line)
    return aqe_text(query, expansion, self.query_repeats), gold


def score_batch(scorers, items: list[tuple[dict, str, list[str]]], names) -> list[dict]:
  """Runs every scorer on one batch; returns the output records."""
  batch = RewardBatch([t for _, t, _ in items], [g for _, _, g in items], [r for r, _, _ in items])
  rewards: dict[str, np.ndarray] = {}
  ranks: dict[str, np.ndarray] = {}
  for scorer in scorers:
    out = scorer(batch)
    rewards.update(out.rewards)
    ranks.update(out.ranks)
  out_records = []
  for i, (record, _, _) in enumerate(items):
    rec = dict(record)
    rec["rewards"] = {n: float(rewards[n][i]) for n in names}
    rec["ranks"] = {r: int(v[i]) for r, v in ranks.items()}
    out_records.append(rec)
  return out_records


def summarize(scored_dir: pathlib.Path, names, ks) -> dict:
  """Mean rewards and retention@k of the records in `scored_dir` (one output or its process parts)."""
  values: dict[str, list[float]] = {n: [] for n in names}
  ranks: dict[str, list[int]] = {}
  for _, _, rec in iter_records(scored_dir, require_complete=False):
    for n in names:
      values[n].append(rec["rewards"][n])
    for r, v in rec.get("ranks", {}).items():
      ranks.setdefault(r, []).append(v)
  return {"records": len(next(iter(values.values()), [])),
          "mean_reward": {n: float(np.mean(v)) if v else None for n, v in values.items()},
          "retention": {r: retention_at_k(v, ks) for r, v in ranks.items()}}


def run(config: Any) -> dict:
  """Holds `config.workdir`'s one-writer lock (`qgjax.data.workdir_lock`) for the whole job."""
  from qgjax.data.workdir_lock import lock_workdir
  from qgjax.parallel.distributed import is_main_process

  require(config, "workdir")
  with lock_workdir(config.workdir, "score", enabled=is_main_process()):
    return _run(config)


def _run(config: Any) -> dict:
  require(config, "input", "workdir", "rewards", "reward")
  names = list(config.rewards)
  if config.reward not in names:
    raise ConfigError(f"config.reward '{config.reward}' must be one of config.rewards ({', '.join(names)})")
  data_dir = storage.as_path(config.data_dir or demo_dir())
  corpus = Corpus(data_dir / "corpus.jsonl")
  first = next(iter_records(config.input), None)
  if first is None:
    raise InputError("no records to score", path=str(config.input))
  mode = detect_mode(first[2])
  targets = Targets(mode, corpus, config, data_dir)
  ctx = RewardContext(config, corpus)
  scorers = build_scorers(names, ctx)

  settings = {"rewards": names, "reward": config.reward, "rank_reward": config.rank_reward,
              "depth": config.depth, "bm25": config.bm25.to_dict(),
              # the repeat count in use, wherever it came from (a tune_repeats file names it at run time)
              "aqe": {"query_repeats": targets.query_repeats if mode == "aqe" else int(config.aqe.query_repeats)}}
  if "bm25_ndcg" in names:
    settings["ndcg_cutoff"] = int(config.ndcg_cutoff)
  if any(n.startswith("dense") for n in names):
    settings["dense"] = {k: v for k, v in config.dense.to_dict().items()
                         if k not in ("cache_dir", "batch_size", "chunk")}  # these do not change results
  if "cross_encoder" in names:
    settings["cross_encoder"] = {k: v for k, v in config.cross_encoder.to_dict().items()
                                 if k not in ("batch_size", "attention_impl")}
    settings["cross_encoder"]["dtype"] = model_numerics(config.cross_encoder, "config.cross_encoder")[0]
  if "llm_judge" in names:   # the dtype as resolved on this host; the attention kernel does not change results
    settings["llm_judge"] = {k: v for k, v in config.llm_judge.to_dict().items()
                             if k not in ("batch_size", "attention_impl")}
    settings["llm_judge"]["dtype"] = model_numerics(config.llm_judge, "config.llm_judge")[0]
  settings["bm25"].pop("cache_dir", None)
  meta = {"input": storage.resolved(config.input), "input_fingerprint": fingerprint(config.input),
          "corpus": storage.resolved(corpus.path), "mode": mode, "settings": settings}
  index, count = jax.process_index(), jax.process_count()
  scored = storage.as_path(config.workdir) / "scored"
  out_dir = part_dir(scored, index, count)
  if count > 1:
    meta["process"] = [index, count]
  key = AQE_KEY if mode == "aqe" else QG_KEY
  block = process_block(count_input(config.input), index, count)
  with ShardedJsonlWriter(out_dir, key=key, shard_size=int(config.shard_size), meta=meta) as writer:
    def pending():
      unique = UniqueKeys(writer.key_of)
      for position, (path, line, record) in enumerate(iter_records(config.input)):
        if detect_mode(record) != mode:
          raise InputError(f"record is a {detect_mode(record)} record in a {mode} input", path=path, line=line)
        key = unique(record, path, line)
        text, gold = targets(record, path, line)
        if key in writer.done_keys or position not in block:
          continue
        yield record, text, gold

    bar = progress(total=len(block), desc="score", unit="query", initial=writer.num_records)
    with process_local() if count > 1 else contextlib.nullcontext():
      for items in batches(pending(), int(config.batch_size)):
        for rec in score_batch(scorers, items, names):
          rec["reward"] = rec["rewards"][config.reward]
          writer.write(rec)
        bar.update(len(items))
    bar.close()
    writer.commit()
    summary = summarize(out_dir, names, config.retention_ks)
    done = writer.finish(**summary)
  if count > 1:
    barrier(f"score {scored}")   # every part is finished before the summary of all
    summary = summarize(scored, names, config.retention_ks)
    done = {"out_dir": str(scored), "records": summary["records"], "parts": count,
            "written_now": done["written_now"]}
  return {"scored": str(scored), "mode": mode, **done, **summary, **reward_model_numerics(ctx)}


def reward_model_numerics(ctx: RewardContext) -> dict:
  """{"dtype": {model: compute dtype}, "attention": {model: "xla" | "cudnn"}} of the neural reward
  models this run built ("dense", "cross_encoder", "llm_judge"; none for BM25-only runs)."""
  built = {name: model_numerics(s.model_config, name) for name, s in ctx.cache.items() if hasattr(s, "model_config")}
  return {"dtype": {n: d for n, (d, _) in built.items()}, "attention": {n: a for n, (_, a) in built.items()}}
