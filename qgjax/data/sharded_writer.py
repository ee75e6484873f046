"""Sharded, resumable JSONL output with a manifest.

```
<out_dir>/manifest.json          format, key fields, meta, committed shards (records, bytes, sha256), complete
<out_dir>/shard-00000.jsonl      committed shards: never rewritten
<out_dir>/shard-00001.jsonl.tmp  the shard being written (appended to, one record per line)
<out_dir>/.lock                  flock held by the one writer
```

`out_dir` may be a gs:// URL (qgjax.data.storage): a shard is committed by one upload of the
final object, then the manifest's (each atomic on GCS); the open shard is kept in memory and
uploaded whole as `.tmp` at each `flush()`; the lock is a lock object with a lease.

A shard is committed by fsync -> rename `.tmp` -> final name -> rewrite the manifest through
its own temp file and an atomic rename. Each record has a key (one or more of its fields, e.g.
`("doc_id", "sample_idx")`). Opening a writer on an existing directory resumes it: committed
shards are verified against their checksums, a shard renamed just before a kill but not yet in
the manifest is adopted, the `.tmp` shard keeps its complete, parseable lines and loses a torn
last line, and `writer.done_keys` holds every key already written, so a job killed at any
moment and started again ends with each record exactly once. `write()` of a key already
written is skipped (returns False).

    with ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), meta={"model": m}) as w:
      for rec in produce(skip=w.done_keys):
        w.write(rec)
      w.finish()
    for rec in iter_sharded(out, require_complete=True): ...
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
from typing import Any, Hashable, Iterator, Sequence

from qgjax.data import storage
from qgjax.data.safe_files import fsync_dir, join_inside, open_append, open_no_follow, write_json_atomic
from qgjax.data.settings_diff import changed_settings
from qgjax.data.workdir_lock import acquire, release
from qgjax.errors import ConfigError, InputError

FORMAT = "qgjax.sharded_jsonl/1"
MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.jsonl$")


def shard_name(index: int) -> str:
  return f"shard-{index:05d}.jsonl"


def _json_default(obj: Any) -> Any:
  if hasattr(obj, "tolist"):  # numpy scalars and arrays, jax arrays
    return obj.tolist()
  raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def dumps_record(record: dict) -> str:
  """One record as one JSON line (no trailing newline); numpy values become Python values."""
  return json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=_json_default)


_fsync_dir = fsync_dir
_write_json_atomic = write_json_atomic


def _read_no_follow(path: pathlib.Path) -> bytes:
  if storage.is_remote(path):
    return path.read_bytes()
  with open_no_follow(path, "rb") as f:
    return f.read()


def shard_path(out_dir: str | os.PathLike, entry: dict, manifest_path: str | os.PathLike | None = None) -> pathlib.Path:
  """The file of a manifest's shard entry, required to lie inside `out_dir` (InputError otherwise)."""
  root = storage.as_path(out_dir)
  if not isinstance(entry, dict) or "file" not in entry:
    raise InputError("a shard entry has no 'file'", path=str(manifest_path or root / MANIFEST), field="shards")
  return join_inside(root, entry["file"], source=manifest_path or root / MANIFEST)


def read_manifest(out_dir: str | os.PathLike) -> dict | None:
  """The manifest of a sharded output, or None when the directory has none yet."""
  path = storage.as_path(out_dir) / MANIFEST
  if not path.is_file():
    return None
  try:
    manifest = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise InputError(f"corrupt manifest: {e.msg}", path=str(path), line=e.lineno) from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise InputError(f"not a {FORMAT} manifest", path=str(path), field="format")
  return manifest


def _parse_lines(path: pathlib.Path, data: bytes, *, strict: bool) -> tuple[list[dict], int]:
  """Parses newline-terminated JSON lines of `data`.

  Returns (records, number of valid bytes). `strict` raises InputError on the first bad or
  unterminated line; otherwise parsing stops there (a torn tail after a kill).
  """
  records, pos = [], 0
  line_no = 0
  while pos < len(data):
    end = data.find(b"\n", pos)
    line_no += 1
    if end < 0:
      if strict:
        raise InputError("last line has no newline (truncated file?)", path=str(path), line=line_no)
      break
    try:
      obj = json.loads(data[pos:end].decode("utf-8"))
      if not isinstance(obj, dict):
        raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as e:
      if strict:
        raise InputError(f"malformed record: {e}", path=str(path), line=line_no) from None
      break
    records.append(obj)
    pos = end + 1
  return records, pos


class ShardedJsonlWriter:
  """Writes records as JSONL shards of `shard_size` records; resumes an existing `out_dir`.

  Args:
    out_dir: output directory (created).
    key: record field name(s) that identify a record; keys are the field value (one field)
      or a tuple of values (several), and must be str/int/float/bool.
    shard_size: records per committed shard.
    meta: JSON-able settings of the job that produces the records; resuming with different
      meta is a ConfigError (the output would mix two jobs).
  """

  def __init__(self, out_dir: str | os.PathLike, *, key: str | Sequence[str],
               shard_size: int = 10_000, meta: dict | None = None):
    if shard_size < 1:
      raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    self.out_dir = storage.as_path(out_dir)
    self.key_fields = [key] if isinstance(key, str) else list(key)
    if not self.key_fields:
      raise ConfigError("a sharded output needs at least one key field")
    self.shard_size = int(shard_size)
    self.meta = json.loads(json.dumps(meta or {}, default=_json_default))
    self._lock_key = acquire(self.out_dir, str(self.meta.get("stage", "writer")))
    self.done_keys: set[Hashable] = set()
    self.num_written = 0  # records written by this process
    self.num_skipped = 0  # write() calls for keys already present
    self._tmp_file = None
    self._tmp_records = 0
    self._closed = False
    try:
      self._recover()
    except BaseException:
      self._release()
      raise

  # -- resume ----------------------------------------------------------------------------------

  def _key(self, record: dict) -> Hashable:
    values = []
    for f in self.key_fields:
      if f not in record:
        raise ValueError(f"record has no key field '{f}': {dumps_record(record)[:200]}")
      v = record[f]
      if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
      if not isinstance(v, (str, int, float, bool)):
        raise ValueError(f"key field '{f}' must be str/int/float/bool, got {type(v).__name__}")
      values.append(v)
    return values[0] if len(values) == 1 else tuple(values)

  def key_of(self, record: dict) -> Hashable:
    """The key of `record` as stored in `done_keys`."""
    return self._key(record)

  def _add_keys(self, records: list[dict], path: pathlib.Path) -> None:
    for line_no, rec in enumerate(records, start=1):
      k = self._key(rec)
      if k in self.done_keys:
        raise InputError(f"key {k!r} appears twice in the output", path=str(path), line=line_no)
      self.done_keys.add(k)

  def _holds_no_records(self, manifest: dict) -> bool:
    if manifest.get("shards") or any(_SHARD_RE.match(p.name) for p in self.out_dir.iterdir()):
      return False
    return all(storage.is_link(p) or not _parse_lines(p, p.read_bytes(), strict=False)[0]
               for p in self.out_dir.glob("shard-*.jsonl.tmp"))

  def _recover(self) -> None:
    manifest = read_manifest(self.out_dir)
    if manifest is None:
      # The manifest is written before the first record, so shards without one are foreign.
      leftovers = sorted(p.name for p in self.out_dir.iterdir() if _SHARD_RE.match(p.name))
      if leftovers:
        raise InputError(f"shards without a manifest ({', '.join(leftovers[:3])}); not a "
                         "resumable output or its manifest was deleted", path=str(self.out_dir))
      manifest = {"format": FORMAT, "key": self.key_fields, "meta": self.meta, "shards": [],
                  "records": 0, "complete": False}
    else:
      if manifest.get("key") != self.key_fields:
        raise ConfigError(f"{self.out_dir} was written with key {manifest.get('key')}, not "
                          f"{self.key_fields}; use another output directory")
      if manifest.get("meta") != self.meta and self._holds_no_records(manifest):
        # nothing was written under the old settings (the job stopped on its input first): start over
        manifest = dict(manifest, meta=self.meta)
        _write_json_atomic(self.out_dir / MANIFEST, manifest)
      if manifest.get("meta") != self.meta:
        changes = "; ".join(changed_settings(manifest.get("meta") or {}, self.meta))
        raise ConfigError(f"{self.out_dir} was written by a job with different settings ({changes});"
                          " use another output directory or the original settings")
    self._manifest = manifest
    # Committed shards: verify and collect their keys.
    listed = set()
    for entry in manifest["shards"]:
      path = shard_path(self.out_dir, entry)
      listed.add(entry["file"])
      if not path.is_file():
        raise InputError("committed shard is missing", path=str(path))
      data = _read_no_follow(path)
      if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise InputError("committed shard does not match its checksum in the manifest "
                         "(modified or corrupted)", path=str(path))
      records, _ = _parse_lines(path, data, strict=True)
      self._add_keys(records, path)
    next_index = len(manifest["shards"])
    # A shard renamed into place just before a kill, before the manifest listed it: adopt it.
    orphan = self.out_dir / shard_name(next_index)
    if orphan.is_file() or storage.is_link(orphan):
      data = _read_no_follow(orphan)
      records, _ = _parse_lines(orphan, data, strict=True)
      self._add_keys(records, orphan)
      self._append_manifest_entry(orphan.name, len(records), data)
      next_index += 1
    stray = sorted(p.name for p in self.out_dir.iterdir()
                   if _SHARD_RE.match(p.name) and p.name not in listed and p.name != orphan.name)
    if stray:
      raise InputError(f"shards not in the manifest: {', '.join(stray[:3])}", path=str(self.out_dir))
    self._next_index = next_index
    # The open shard: keep its complete lines, cut a torn tail.
    for p in self.out_dir.glob("shard-*.jsonl.tmp"):
      if p.name != shard_name(next_index) + ".tmp":
        p.unlink()  # cannot hold records: older tmp shards were renamed before the manifest moved on
    tmp = self.out_dir / (shard_name(next_index) + ".tmp")
    if tmp.is_file() or storage.is_link(tmp):
      data = _read_no_follow(tmp)  # a planted link is an error, never read or truncated through
      records, valid = _parse_lines(tmp, data, strict=False)
      if valid < len(data) and storage.is_remote(tmp):
        storage.write_bytes_atomic(tmp, data[:valid])
      elif valid < len(data):
        with open_no_follow(tmp, "r+b") as f:
          f.truncate(valid)
      self._add_keys(records, tmp)
      self._tmp_records = len(records)
    if not self.out_dir.joinpath(MANIFEST).is_file():
      _write_json_atomic(self.out_dir / MANIFEST, self._manifest)

  def _append_manifest_entry(self, name: str, records: int, data: bytes) -> None:
    self._manifest["shards"].append({"file": name, "records": records, "bytes": len(data),
                                     "sha256": hashlib.sha256(data).hexdigest()})
    self._manifest["records"] = sum(s["records"] for s in self._manifest["shards"])
    self._manifest["complete"] = False
    _write_json_atomic(self.out_dir / MANIFEST, self._manifest)

  # -- writing ---------------------------------------------------------------------------------

  @property
  def num_records(self) -> int:
    """Records in the output so far (committed and open shard), including earlier runs."""
    return len(self.done_keys)

  @property
  def complete(self) -> bool:
    return bool(self._manifest.get("complete"))

  def is_done(self, key: Hashable) -> bool:
    return key in self.done_keys

  def write(self, record: dict) -> bool:
    """Appends `record`; returns False (and writes nothing) when its key is already written."""
    if self._closed:
      raise RuntimeError("writer is closed")
    k = self._key(record)
    if k in self.done_keys:
      self.num_skipped += 1
      return False
    line = (dumps_record(record) + "\n").encode("utf-8")
    if self._tmp_file is None:
      self._tmp_file = open_append(self.out_dir / (shard_name(self._next_index) + ".tmp"), "ab")
    if self._manifest.get("complete"):
      self._manifest["complete"] = False
      _write_json_atomic(self.out_dir / MANIFEST, self._manifest)
    self._tmp_file.write(line)
    self.done_keys.add(k)
    self.num_written += 1
    self._tmp_records += 1
    if self._tmp_records >= self.shard_size:
      self._commit_shard()
    return True

  def flush(self) -> None:
    """Pushes buffered records to the OS (they survive a kill of this process)."""
    if self._tmp_file is not None:
      self._tmp_file.flush()

  def _commit_shard(self) -> None:
    tmp = self.out_dir / (shard_name(self._next_index) + ".tmp")
    final = self.out_dir / shard_name(self._next_index)
    if storage.is_remote(self.out_dir):
      self._commit_remote_shard(tmp, final)
      return
    if self._tmp_file is not None:
      self._tmp_file.flush()
      os.fsync(self._tmp_file.fileno())
      self._tmp_file.close()
      self._tmp_file = None
    if self._tmp_records == 0 or not tmp.is_file():
      return
    os.replace(tmp, final)
    _fsync_dir(self.out_dir)
    self._append_manifest_entry(final.name, self._tmp_records, final.read_bytes())
    self._next_index += 1
    self._tmp_records = 0

  def _commit_remote_shard(self, tmp, final) -> None:
    """gs://: the final shard in one upload (its whole bytes), then the manifest, then the temp
    object goes (a kill between leaves an orphan shard that the next run adopts, as locally)."""
    if self._tmp_file is not None:
      data = bytes(self._tmp_file.data)
      self._tmp_file = None
    else:
      data = tmp.read_bytes() if tmp.is_file() else b""
    if self._tmp_records == 0 or not data:
      return
    storage.write_bytes_atomic(final, data)
    self._append_manifest_entry(final.name, self._tmp_records, data)
    storage.remove(tmp)
    self._next_index += 1
    self._tmp_records = 0

  def commit(self) -> None:
    """Commits the open shard now (even if not full), so readers of the output see every record."""
    self._commit_shard()

  def finish(self, **summary: Any) -> dict:
    """Commits the open shard and marks the output complete; `summary` goes into the manifest."""
    self._commit_shard()
    self._manifest["complete"] = True
    if summary:
      self._manifest["summary"] = json.loads(json.dumps(summary, default=_json_default))
    _write_json_atomic(self.out_dir / MANIFEST, self._manifest)
    return {"out_dir": str(self.out_dir), "records": self._manifest["records"],
            "shards": len(self._manifest["shards"]), "written_now": self.num_written}

  def _release(self) -> None:
    release(self._lock_key)

  def close(self) -> None:
    """Flushes the open shard (kept for the next run) and releases the lock; no commit."""
    if self._closed:
      return
    self._closed = True
    try:
      if self._tmp_file is not None:
        storage.sync(self._tmp_file)
        self._tmp_file.close()
        self._tmp_file = None
    finally:
      self._release()

  def __enter__(self) -> "ShardedJsonlWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def is_complete(out_dir: str | os.PathLike) -> bool:
  manifest = read_manifest(out_dir)
  return bool(manifest and manifest.get("complete"))


def iter_sharded(out_dir: str | os.PathLike, *, verify: bool = False,
                 require_complete: bool = False) -> Iterator[dict]:
  """Yields every committed record of a sharded output, shard by shard, in write order.

  `verify` checks each shard's sha256 against the manifest; `require_complete` raises
  InputError unless the producing job called `finish()`.
  """
  root = storage.as_path(out_dir)
  manifest = read_manifest(root)
  if manifest is None:
    raise InputError("no manifest.json: not a sharded output (or its job never started)",
                     path=str(root))
  if require_complete and not manifest.get("complete"):
    raise InputError("output is incomplete: run the job that writes it again to finish it",
                     path=str(root))
  for entry in manifest["shards"]:
    path = shard_path(root, entry)
    if not path.is_file():
      raise InputError("committed shard is missing", path=str(path))
    if verify:
      data = path.read_bytes()
      if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise InputError("shard does not match its checksum in the manifest", path=str(path))
      yield from _parse_lines(path, data, strict=True)[0]
      continue
    with path.open("rb") as f:
      for line_no, raw in enumerate(f, start=1):
        try:
          yield json.loads(raw)
        except ValueError as e:
          raise InputError(f"malformed record: {e}", path=str(path), line=line_no) from None


def count_records(out_dir: str | os.PathLike) -> int:
  manifest = read_manifest(out_dir)
  return int(manifest["records"]) if manifest else 0
