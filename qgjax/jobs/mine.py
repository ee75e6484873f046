"""`qgjax mine`: dense index of the corpus + hard negatives for every generated query, resumable.

  qgjax mine --config configs/mine.py:tiny
  qgjax mine --config configs/mine.py --config.input=runs/nfcorpus/generate_aligned \
      --config.data_dir=../shared/data/nfcorpus --config.workdir=runs/nfcorpus/mine

Steps, each resumable:
  1. embed the corpus with `encoder.model` into <workdir>/embeddings (sharded .npy + manifest), or
     with `encoder.cache_dir` into the store there that score and evaluate share (one encode of a
     corpus per model for all of them: `qgjax.retrieval.dense.corpus_store_dir`);
  2. index it: exact search (jitted matmul + top_k) below `index.scann_min_rows` rows, ScaNN
     (tree + AH + reorder, `index.scann`) from there; the choice and its reason are printed and
     returned; a ScaNN index is saved in <workdir>/index and reused;
  3. for each generated query {doc_id, sample_idx, query}: retrieve `mining.top_k`, sample
     negatives below the source document's rank, relabel false negatives with `reranker`
     (see qgjax.retrieval.mining), and write <workdir>/tuples (sharded JSONL, key
     doc_id + sample_idx): {doc_id, sample_idx, query, pos_id, orig_pos_id, pos_rank,
     relabelled, neg_ids, neg_ranks, false_negatives} (+ ce_pos, ce_neg: the reranker's scores,
     with `mining.store_scores`, for the retriever's MarginMSE loss); a dropped query is written
     with `skip: <reason>` instead (the retriever's reader ignores it).
The summary counts tuples, skips by reason and `relabelled_positives` (tuples whose positive the
reranker changed: `mining.relabel=relabel` or Gecko's `mining.relabel_positive`).

On P processes (`jax.distributed`) every process takes part in the corpus encode (each 1/P of
every batch; process 0 writes the store) and holds the whole index; process i mines the i-th
contiguous block of the input's queries (`qgjax.data.records.process_block`) with its own
devices (`qgjax.parallel.data_parallel.process_local`) into <workdir>/tuples/process-<i>, which
readers take in process order (the input's order). After a barrier each process returns the
summary of all parts.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import pathlib
from typing import Any, Iterator

import jax

from qgjax.config import require
from qgjax.data import demo_dir, storage
from qgjax.data.beir import Corpus
from qgjax.data.progress import progress
from qgjax.data.records import UniqueKeys, batches, count_input, fingerprint, iter_records, part_dir, process_block
from qgjax.data.sharded_writer import ShardedJsonlWriter
from qgjax.errors import InputError
from qgjax.parallel.data_parallel import process_local
from qgjax.parallel.distributed import barrier
from qgjax.retrieval.dense import DenseEncoder, build_index, corpus_store_dir, embed_corpus, load_pair_scorer
from qgjax.retrieval.mining import MiningConfig, mine_outcomes

KEY = ("doc_id", "sample_idx")
log = logging.getLogger(__name__)


def _pending(source: str, corpus: Corpus, done, query_field: str, block: range | None = None) -> Iterator[dict]:
  """The queries at input positions in `block` (None: all) not `done`; every record is checked."""
  unique = UniqueKeys(lambda rec: (str(rec["doc_id"]), _sample_idx(rec["sample_idx"])))
  for position, (path, line, rec) in enumerate(iter_records(source)):
    for field in ("doc_id", "sample_idx", query_field):
      if field not in rec:
        raise InputError("missing", path=path, line=line, field=field)
    text = rec[query_field]
    if not isinstance(text, str) or not text.strip():
      raise InputError("missing or empty query text", path=path, line=line, field=query_field)
    doc_id = str(rec["doc_id"])
    if doc_id not in corpus:
      raise InputError(f"document '{doc_id}' is not in {corpus.path} (wrong data_dir?)", path=path, line=line,
                       field="doc_id")
    if unique(rec, path, line) in done or (block is not None and position not in block):
      continue
    yield {"doc_id": doc_id, "sample_idx": rec["sample_idx"], "query": text}


def _sample_idx(value):
  if isinstance(value, bool) or not isinstance(value, (str, int)):
    raise ValueError(f"field 'sample_idx' must be an integer or a string, got {value!r}")
  return value


def run(config: Any) -> dict:
  """Holds `config.workdir`'s one-writer lock (`qgjax.data.workdir_lock`) for the whole job."""
  from qgjax.data.workdir_lock import lock_workdir
  from qgjax.parallel.distributed import is_main_process

  require(config, "workdir")
  with lock_workdir(config.workdir, "mine", enabled=is_main_process()):
    return _run(config)


def _run(config: Any) -> dict:
  require(config, "input", "workdir")
  data_dir = storage.as_path(config.data_dir or demo_dir())
  corpus_path = str(data_dir / "corpus.jsonl")
  corpus = Corpus(corpus_path)
  workdir = storage.as_path(config.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mcfg = MiningConfig.from_config(config.mining.to_dict())
  e = config.encoder

  encoder = DenseEncoder.load(e.model)
  store = (corpus_store_dir(e.cache_dir, corpus_path, encoder, int(e.max_len)) if e.cache_dir
           else str(workdir / "embeddings"))
  doc_ids, emb = embed_corpus(corpus_path, store, encoder, batch_size=int(e.batch_size),
                              max_len=int(e.max_len), shard_rows=int(e.shard_rows), corpus=corpus)
  said: list[str] = []
  index = build_index(emb, config.index.to_dict(), cache_dir=str(workdir / "index"),
                      report=lambda m: (said.append(m), log.info("%s", m)))
  scorer = load_pair_scorer(config.reranker.to_dict(), encoder)
  doc_text = lambda d: corpus[d].contents

  meta = {"input": storage.resolved(config.input), "input_fingerprint": fingerprint(config.input),
          "corpus": storage.absolute(corpus_path), "encoder": {k: e[k] for k in ("model", "max_len", "query_max_len")},
          "mining": config.mining.to_dict(),
          "reranker": {k: v for k, v in config.reranker.to_dict().items() if k != "batch_size"}}
  index_p, count = jax.process_index(), jax.process_count()
  tuples = workdir / "tuples"
  out_dir = part_dir(tuples, index_p, count)
  if count > 1:
    meta["process"] = [index_p, count]
  block = process_block(count_input(config.input), index_p, count)
  stats: collections.Counter = collections.Counter()
  top_k = int(min(mcfg.top_k, len(doc_ids)))
  with ShardedJsonlWriter(out_dir, key=KEY, shard_size=int(config.shard_size), meta=meta) as writer, \
      (process_local() if count > 1 else contextlib.nullcontext()):
    bar = progress(total=len(block), desc="mine", unit="query", initial=writer.num_records)
    for batch in batches(_pending(config.input, corpus, writer.done_keys, config.query_field, block),
                          int(config.batch_size)):
      q = encoder.encode_queries([b["query"] for b in batch], batch_size=int(e.batch_size),
                                 max_len=int(e.query_max_len))
      _, rows = index.search(q, top_k)
      retrieved = [[doc_ids[r] for r in row if r >= 0] for row in rows]
      examples = [{"key": f"{b['doc_id']}\t{b['sample_idx']}", "pos_id": b["doc_id"], **b} for b in batch]
      for b, res in zip(batch, mine_outcomes(examples, retrieved, mcfg, scorer, doc_text)):
        if isinstance(res, str):
          stats[res] += 1
          rec = {**b, "skip": res}
        else:
          stats["kept"] += 1
          rec = {k: v for k, v in res.items() if k != "key"}
        writer.write(rec)
      bar.update(len(batch))
    bar.close()
    writer.commit()
    summary = {**_summarize(out_dir), "index": said[-1] if said else ""}
    done = writer.finish(**summary)
  if count > 1:
    barrier(f"mine {tuples}")   # every part is finished before the summary of all
    summary = {**_summarize(tuples), "index": summary["index"]}
    done = {"out_dir": str(tuples), "records": count_input(tuples), "parts": count,
            "written_now": done["written_now"]}
  return {"tuples": str(tuples), **done, **summary, "this_run": dict(stats)}


def _summarize(out_dir: pathlib.Path) -> dict:
  """Tuples, skips by reason, relabelled positives and the mean positive rank of `out_dir` (one
  output or its process parts)."""
  counts: collections.Counter = collections.Counter()
  ranks = []
  for _, _, rec in iter_records(out_dir, require_complete=False):
    if "skip" in rec:
      counts["skipped:" + rec["skip"]] += 1
      continue
    counts["tuples"] += 1
    counts["relabelled_positives"] += int(rec.get("relabelled", False))
    ranks.append(rec["pos_rank"])
  found = [r for r in ranks if r >= 0]
  return {"counts": dict(counts), "mean_pos_rank": (sum(found) / len(found)) if found else None}
