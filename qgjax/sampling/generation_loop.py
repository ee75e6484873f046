"""One resumable generation loop for every recipe: a source of prompts, a sampler, a record builder.

  source = PromptSource(entries=docs, total=len(docs), item_id=lambda d: d.doc_id,
                        prepare=lambda d: Item(d.doc_id, d.contents, prompt_of(d)))
  result = run_generation(source, sample, build_records,
                          Output("runs/gen", key=("doc_id", "sample_idx"), meta=settings),
                          buckets=(128, 256), batch_size=16, unit="doc")

`sample(items, bucket) -> batch` runs the model on up to batch_size prompts of one length bucket
(e.g. `Sampler.run`); `build_records(items, batch) -> (records in write order, tokens generated
per item)` turns its samples into records (`per_item` adapts a builder of one item's records).

What the loop owns, so every job that generates behaves alike:
- the process split: process i of P takes the entries i, i + P, i + 2P, ... of the source's
  stream (`pending_items`) and writes to `output_dir` itself (P = 1) or
  `output_dir/process-<i:05d>` (P > 1; `process_dir`); with P > 1 each part also holds
  `item_ranks.json` (`write_item_ranks`): each of its items' position in the order one process
  writes them, so readers take the parts as one output in that order (`qgjax.data.records`).
  Building it costs every process the prompts of every item (their lengths pick the buckets),
  and it needs each item's records written together (`per_item` builders do);
- the sharded writer (`qgjax.data.sharded_writer`; the output's meta gains "process": [i, P]);
- the done log (`qgjax.sampling.done_log`): read once at the start, the ids of a batch (with the
  tokens generated for each) appended after its records are flushed; a rerun skips the listed
  ids, generates the rest again (keys fold in the seed and the item id, so the same samples come
  back) and the writer drops records it already holds: a job killed at any moment ends with each
  record exactly once;
- batching by prompt-length bucket (`qgjax.sampling.batching.bucketed`), in stream order;
- progress (a tqdm bar on stderr when `qgjax.data.progress` shows bars, else a line every
  `log_every_s` on the job's logger: items, items/s, tokens/s, ETA) and the summary (`LoopResult`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import pathlib
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

from qgjax.sampling.done_log import DoneLog, done_ids, done_tokens, read_done_entries

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Item:
  """One prompt: the id it is keyed by, the text post-processing compares against, its tokens,
  and fields its records carry besides (e.g. negative_id)."""
  item_id: str
  source_text: str
  prompt: list[int]
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PromptSource:
  """A job's items in stream order: `entries` (cheap, e.g. documents; the first `total` are
  used), their ids, and `prepare(entry) -> Item`, called only for the entries this process
  generates and has not done yet."""
  entries: Iterable[Any]
  total: int
  item_id: Callable[[Any], str]
  prepare: Callable[[Any], Item]


@dataclasses.dataclass
class Output:
  """Where and how records are written: the job's output directory (the process parts go
  below it), the record fields that key a record, the job's settings (a resume with other
  settings is refused) and records per shard."""
  output_dir: str | pathlib.Path
  key: Sequence[str]
  meta: dict
  shard_size: int = 10_000


@dataclasses.dataclass
class LoopResult:
  """What a run of the loop did. `summary` is the writer's (out_dir, records, shards,
  written_now; on P > 1 JAX processes the records and shards of all parts, and `parts`); `items`
  counts the items (of all those processes), `items_this_run` this process's generated now;
  `generated_tokens` adds every run's tokens (of all those processes; as the manifests' summaries do)."""
  summary: dict
  items: int
  items_this_run: int
  tokens_this_run: int
  generated_tokens: int
  items_per_s: float
  tokens_per_s: float
  generation_s: float
  examples: list[dict]


Sample = Callable[[list[Item], int], Any]
BuildRecords = Callable[[list[Item], Any], tuple[list[dict], list[int]]]


def current_process() -> tuple[int, int]:
  """(jax.process_index(), jax.process_count())."""
  import jax

  return jax.process_index(), jax.process_count()


def process_dir(output_dir: str | pathlib.Path, process_index: int, process_count: int) -> pathlib.Path:
  """This process's output directory: `output_dir` alone, or its `process-<i:05d>` part."""
  from qgjax.data.records import part_dir
  return part_dir(output_dir, process_index, process_count)


def item_ranks(source: PromptSource, buckets: Sequence[int], batch_size: int, process_index: int,
               process_count: int) -> dict[str, int]:
  """{item id: its position in the order one process writes the items} for the items of process
  `process_index` (stream positions i with i % P == index). One process writes in the batches
  `bucketed` forms from the whole stream, so every item's prompt is built to learn its length."""
  from qgjax.sampling.batching import bucketed

  total = max(int(source.total), 0)
  stream = ((pos, source.item_id(e), len(source.prepare(e).prompt)) for pos, e in zip(range(total), source.entries))
  order = (x for _, group in bucketed(stream, lambda x: x[2], buckets, int(batch_size)) for x in group)
  return {item: rank for rank, (pos, item, _) in enumerate(order) if pos % process_count == process_index}


def write_item_ranks(out_dir: pathlib.Path, field: str, ranks: dict[str, int]) -> None:
  """<out_dir>/item_ranks.json: {"field": the records' item field, "ranks": {item id: rank}}."""
  from qgjax.data.records import ITEM_RANKS
  from qgjax.data.safe_files import write_json_atomic

  write_json_atomic(out_dir / ITEM_RANKS, {"field": field, "ranks": ranks})


def pending_items(source: PromptSource, done: set[str], process_index: int,
                  process_count: int) -> tuple[int, Iterator[Item]]:
  """(number of items of this process, iterator over those whose id is not in `done`)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process index {process_index} is not in [0, {process_count})")
  total = max(int(source.total), 0)

  def mine() -> Iterator[Item]:
    for position, entry in enumerate(source.entries):
      if position >= total:
        break
      if position % process_count == process_index and source.item_id(entry) not in done:
        yield source.prepare(entry)
  return len(range(process_index, total, process_count)), mine()


def all_parts_summary(output_dir: str | pathlib.Path, count: int, written_now: int) -> tuple[dict, int, int]:
  """After a barrier (every process's part is finished): (the writer's summary for the whole
  output, items of all processes, generated tokens of all processes)."""
  from qgjax.data.sharded_writer import read_manifest
  from qgjax.parallel.distributed import barrier

  barrier(f"generation {output_dir}")
  manifests = [read_manifest(process_dir(output_dir, i, count)) for i in range(count)]
  records = sum(int(m["records"]) for m in manifests)
  shards = sum(len(m["shards"]) for m in manifests)
  items = sum(int(m.get("summary", {}).get("items", 0)) for m in manifests)
  tokens = sum(int(m.get("summary", {}).get("generated_tokens", 0)) for m in manifests)
  return ({"out_dir": str(output_dir), "records": records, "shards": shards, "parts": count,
           "written_now": written_now}, items, tokens)


def per_item(build: Callable[[Item, Any, int], tuple[list[dict], int]]) -> BuildRecords:
  """A batch record builder from `build(item, batch, i) -> (item i's records, its tokens)`:
  records item by item, in batch order."""
  def build_batch(items: list[Item], batch: Any) -> tuple[list[dict], list[int]]:
    records, tokens = [], []
    for i, item in enumerate(items):
      recs, n = build(item, batch, i)
      records += recs
      tokens.append(n)
    return records, tokens
  return build_batch


class Progress:
  """Items/s, tokens/s and ETA: a tqdm bar on stderr when bars are shown, else a line on `logger`
  every `every_s` seconds (and at the end)."""

  def __init__(self, total: int, initial: int, unit: str, desc: str, every_s: float,
               logger: logging.Logger | None = None):
    from qgjax.data.progress import WorkEstimate, progress, progress_enabled

    self.total, self.done, self.unit, self.every_s = total, initial, unit, every_s
    self.log = logger or log
    self.bar = progress(total=total, desc=desc, unit=unit, initial=initial) if progress_enabled() else None
    # the bar holds its own estimate; without one, the work and the estimated time go to the job's log
    self.estimate = WorkEstimate(total, initial, desc, unit, logger=self.log) if self.bar is None else None
    self.start = self.last = time.perf_counter()
    self.items = 0
    self.tokens = 0

  def update(self, items: int, tokens: int) -> None:
    self.items += items
    self.tokens += tokens
    self.done += items
    now = time.perf_counter()
    if self.estimate is not None:
      self.estimate.update(items)
    if self.bar is not None:
      self.bar.set_postfix(tok_s=f"{self.tokens / max(now - self.start, 1e-9):.0f}", refresh=False)
      self.bar.update(items)
    elif now - self.last >= self.every_s or self.done >= self.total:
      self.last = now
      self.log.info("%s", self.line())

  def rates(self) -> tuple[float, float]:
    """(items/s, tokens/s) of this run."""
    dt = max(time.perf_counter() - self.start, 1e-9)
    return self.items / dt, self.tokens / dt

  def line(self) -> str:
    ips, tps = self.rates()
    left = self.total - self.done
    eta = left / ips if ips > 0 else float("inf")
    eta_s = "?" if eta == float("inf") else time.strftime("%H:%M:%S", time.gmtime(eta))
    from qgjax.data.progress import plural
    units = plural(self.unit)
    return (f"{self.done}/{self.total} {units}, {ips:.2f} {units}/s, {tps:.0f} tokens/s, "
            f"ETA {eta_s}")

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def run_generation(source: PromptSource, sample: Sample, build_records: BuildRecords, output: Output, *,
                   buckets: Sequence[int], batch_size: int, unit: str = "item", desc: str = "generate",
                   log_every_s: float = 10.0, logger: logging.Logger | None = None, keep_examples: int = 0,
                   process: tuple[int, int] | None = None) -> LoopResult:
  """Generates the records of this process's items not done yet and marks the output complete.

  desc names the progress bar; progress lines go to `logger` (the job's; default this module's).
  process: (index, count); default: this JAX process (then, with several, the result covers every
  process's part, after a barrier). keep_examples: the first records
  written by this run, returned in `examples`.
  """
  from qgjax.data.sharded_writer import ShardedJsonlWriter
  from qgjax.sampling.batching import bucketed

  index, count = process if process is not None else current_process()
  out_dir = process_dir(output.output_dir, index, count)
  writer = ShardedJsonlWriter(out_dir, key=tuple(output.key), shard_size=int(output.shard_size),
                              meta={**output.meta, "process": [index, count]})
  examples: list[dict] = []
  try:
    if count > 1:
      if iter(source.entries) is source.entries:   # a one-shot iterator: the ranks read the stream first
        source = dataclasses.replace(source, entries=list(itertools.islice(source.entries, max(int(source.total), 0))))
      write_item_ranks(out_dir, str(output.key[0]), item_ranks(source, buckets, batch_size, index, count))
    entries = read_done_entries(out_dir)
    done = done_ids(entries)
    total, items = pending_items(source, done, index, count)
    done_log = DoneLog(out_dir)
    bar = Progress(total, len(done), unit, desc, float(log_every_s), logger)
    t_gen = time.perf_counter()
    try:
      for bucket, group in bucketed(items, lambda it: len(it.prompt), buckets, int(batch_size)):
        records, tokens = build_records(group, sample(group, bucket))
        for rec in records:
          writer.write(rec)
          if len(examples) < keep_examples:
            examples.append(rec)
        writer.flush()
        done_log.add([it.item_id for it in group], tokens)
        bar.update(len(group), sum(tokens))
    finally:
      bar.close()
      done_log.close()
    generation_s = time.perf_counter() - t_gen
    items_s, tokens_s = bar.rates()
    generated = done_tokens(entries) + bar.tokens  # a resumed run generates only what earlier ones did not
    summary = writer.finish(items=total, generated_tokens=generated)
  finally:
    writer.close()
  if count > 1 and process is None:   # every part is written by a JAX process of this run
    summary, total, generated = all_parts_summary(output.output_dir, count, summary["written_now"])
  return LoopResult(summary=summary, items=total, items_this_run=bar.items, tokens_this_run=bar.tokens,
                    generated_tokens=generated, items_per_s=round(items_s, 3), tokens_per_s=round(tokens_s, 1),
                    generation_s=round(generation_s, 1), examples=examples)
