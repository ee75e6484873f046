"""Reading the records a stage consumes: a sharded output directory or a plain JSONL file.

  for path, line, record in iter_records("runs/generate/nfcorpus"): ...
  fingerprint("runs/generate/nfcorpus")   # changes whenever the input's content changes

A stage that runs on P processes writes one part per process, `<out>/process-<i:05d>/` (`part_dir`);
a reader takes the parts as one output (`sharded_parts`, `iter_records`). Its order is the order
one process would have written: the parts one after the other (stages that give process i the
i-th contiguous block of their input, `process_block`), or, where a part holds `ITEM_RANKS`
(the generation loop, which deals items round-robin), every record by its item's rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Callable, Hashable, Iterator

from qgjax.data import storage
from qgjax.data.sharded_writer import read_manifest, shard_path
from qgjax.errors import InputError

ITEM_RANKS = "item_ranks.json"   # in a part: {"field": record field, "ranks": {item id: position}}


def part_dir(output_dir: str | os.PathLike, process_index: int, process_count: int) -> storage.AnyPath:
  """Where process `process_index` of `process_count` writes: `output_dir` itself (one process)
  or its part `output_dir/process-<i:05d>`."""
  out = storage.as_path(output_dir)
  return out / f"process-{process_index:05d}" if process_count > 1 else out


def process_block(total: int, process_index: int, process_count: int) -> range:
  """The contiguous block of positions [0, total) that process `process_index` takes: blocks in
  process order, sizes differing by at most one (the first `total % count` one larger)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process index {process_index} is not in [0, {process_count})")
  size, extra = divmod(max(int(total), 0), process_count)
  start = process_index * size + min(process_index, extra)
  return range(start, start + size + (process_index < extra))


def iter_records(source: str | os.PathLike, *, require_complete: bool = True
                 ) -> Iterator[tuple[str, int, dict]]:
  """(file, 1-based line, record) for every record of `source`.

  `source` is a directory written by `ShardedJsonlWriter` (its committed shards in order; an
  unfinished output is refused unless `require_complete=False`), a directory of such outputs
  named `process-<i>` (a multi-host job), or a `.jsonl` file; a local path or a gs:// URL.
  """
  root = storage.as_path(source)
  if root.is_dir():
    files = []
    parts = sharded_parts(root)
    for part in parts:
      manifest = read_manifest(part)
      if require_complete and not manifest.get("complete"):
        raise InputError("output is incomplete: run the stage that writes it again to finish it",
                         path=str(part))
      files += [shard_path(part, entry) for entry in manifest["shards"]]
    if len(parts) > 1 and all((p / ITEM_RANKS).is_file() for p in parts):
      yield from _by_item_rank(parts, files)
      return
  elif root.is_file():
    files = [root]
  else:
    raise InputError("input not found", path=str(root))
  yield from _read_files(files)


def _by_item_rank(parts: list[pathlib.Path], files: list[pathlib.Path]) -> Iterator[tuple[str, int, dict]]:
  """The records of all parts sorted by their item's rank (`ITEM_RANKS`), a part's records of one
  item in the order written. Holds every record in memory."""
  ranks, field = {}, None
  for part in parts:
    path = part / ITEM_RANKS
    try:
      spec = json.loads(path.read_text(encoding="utf-8"))
      part_field, part_ranks = str(spec["field"]), dict(spec["ranks"])
    except (ValueError, KeyError, TypeError) as e:
      raise InputError(f"not an item-rank file: {e}", path=str(path)) from None
    if field not in (None, part_field):
      raise InputError(f"ranks items by '{part_field}', another part by '{field}'", path=str(path))
    field = part_field
    ranks.update(part_ranks)
  rows = []
  for n, (path, line, rec) in enumerate(_read_files(files)):
    item = str(rec.get(field))
    if item not in ranks:
      raise InputError(f"record of item {item!r} has no rank in its part's {ITEM_RANKS}", path=path, line=line,
                       field=field)
    rows.append((ranks[item], n, path, line, rec))
  rows.sort(key=lambda r: (r[0], r[1]))
  for _, _, path, line, rec in rows:
    yield path, line, rec


def _read_files(files: list[pathlib.Path]) -> Iterator[tuple[str, int, dict]]:
  for path in files:
    if not path.is_file():
      raise InputError("shard listed in the manifest is missing", path=str(path))
    with path.open("rb") as f:
      for line_no, raw in enumerate(f, start=1):
        if not raw.strip():
          continue
        try:
          obj = json.loads(raw)
        except ValueError as e:
          raise InputError(f"malformed JSON: {e}", path=str(path), line=line_no) from None
        if not isinstance(obj, dict):
          raise InputError("expected a JSON object", path=str(path), line=line_no)
        yield str(path), line_no, obj


def sharded_parts(root: pathlib.Path) -> list[pathlib.Path]:
  """The sharded outputs in `root`: itself, or its `process-<i>` parts (one per process of a
  multi-host job), in process order."""
  if read_manifest(root) is not None:
    return [root]
  parts = sorted((p for p in root.glob("process-*") if p.is_dir() and p.name[8:].isdigit()),
                 key=lambda p: int(p.name[8:]))
  if not parts or any(read_manifest(p) is None for p in parts):
    raise InputError("directory has no manifest.json (nor process-<i>/manifest.json): not the "
                     "output of a qgjax stage", path=str(root))
  return parts


def batches(items: Iterator, size: int) -> Iterator[list]:
  """Consecutive lists of `size` items from `items` (the last one may be shorter; none empty)."""
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def count_input(source: str | os.PathLike) -> int:
  """The number of records of `source` (a sharded output or its parts: from the manifests; a
  JSONL file: by reading it)."""
  root = storage.as_path(source)
  if root.is_dir():
    return sum(int(read_manifest(p).get("records", 0)) for p in sharded_parts(root))
  return sum(1 for _ in iter_records(root))


def fingerprint(source: str | os.PathLike) -> str:
  """A short hash of the input's content: shard checksums of a sharded output, else file bytes."""
  root = storage.as_path(source)
  h = hashlib.sha256()
  if root.is_dir():
    for part in sharded_parts(root):
      for entry in read_manifest(part)["shards"]:
        h.update(entry["sha256"].encode())
  elif root.is_file():
    with root.open("rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  else:
    raise InputError("input not found", path=str(root))
  return h.hexdigest()[:16]


class UniqueKeys:
  """Checks the input records' keys (the output's key fields, through `key_of`) as they stream:
  a key field of the wrong type, or a second record with a key already seen, is an InputError
  naming the file and line (a record would otherwise be dropped without a word as "done").
  Memory: one entry per distinct key."""

  def __init__(self, key_of: Callable[[dict], Hashable]):
    self._key_of = key_of
    self._first: dict[Hashable, tuple[str, int]] = {}

  def __call__(self, record: dict, path: str, line: int) -> Hashable:
    try:
      key = self._key_of(record)
    except (ValueError, TypeError) as e:
      raise InputError(str(e), path=path, line=line) from None
    first = self._first.setdefault(key, (path, line))
    if first != (path, line):
      raise InputError(f"a second record with key {key!r} (the first is {first[0]}:{first[1]}); records "
                       "from several runs need distinct sample_idx, or separate jobs", path=path, line=line)
    return key
