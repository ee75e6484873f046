"""Corpus embeddings on disk as sharded `.npy` arrays + a manifest; resumable.

```
<dir>/manifest.json     format, dim, dtype, meta, shard_rows, shards [{file, ids, rows, sha256}], complete
<dir>/emb-00000.npy     f32[rows, D] (rows = shard_rows except in the last shard)
<dir>/ids-00000.json    the doc ids of those rows, in order
```

Shards follow the corpus order: shard i holds rows [i * shard_rows, ...). A shard is committed
as in `qgjax.data.sharded_writer`: arrays written to temp files, fsynced, renamed, then the
manifest rewritten atomically; a kill loses at most the shard being encoded. Reopening a store
with the same `meta` resumes after its last committed shard (`writer.num_rows`); different meta
(another model, another corpus) is a ConfigError rather than a silent mix.

  with EmbeddingStoreWriter(d, dim=384, meta={...}, shard_rows=8192) as w:
    for ids, emb in batches_after(w.num_rows): w.write_shard(ids, emb)
    w.finish()
  ids, emb = load_embeddings(d)            # list[str], np.float32[N, D] (memory-mapped shards copied once)
"""

from __future__ import annotations

import hashlib
import json
import io
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from qgjax.data import storage
from qgjax.data.safe_files import join_inside
from qgjax.data.safe_files import write_json_atomic as _write_json_atomic
from qgjax.data.workdir_lock import acquire, release
from qgjax.errors import ConfigError, InputError

FORMAT = "qgjax.embeddings/1"
MANIFEST = "manifest.json"


def _emb_name(i: int) -> str:
  return f"emb-{i:05d}.npy"


def _ids_name(i: int) -> str:
  return f"ids-{i:05d}.json"


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def read_manifest(directory: str | os.PathLike) -> dict | None:
  path = storage.as_path(directory) / MANIFEST
  if not path.is_file():
    return None
  try:
    manifest = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise InputError(f"corrupt manifest: {e.msg}", path=str(path), line=e.lineno) from None
  if manifest.get("format") != FORMAT:
    raise InputError(f"not a {FORMAT} manifest", path=str(path), field="format")
  return manifest


def _inside(root: pathlib.Path, entry: dict, key: str) -> pathlib.Path:
  """A manifest entry's file, required to lie inside the store's directory."""
  if not isinstance(entry, dict) or key not in entry:
    raise InputError(f"a shard entry has no {key!r}", path=str(root / MANIFEST), field="shards")
  return join_inside(root, entry[key], source=root / MANIFEST)


def _json_roundtrip(obj: Any) -> Any:
  return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


class EmbeddingStoreWriter:
  """Appends shards of (doc ids, f32[rows, D]) to `directory`; resumes an existing store."""

  def __init__(self, directory: str | os.PathLike, *, dim: int, meta: dict | None = None,
               shard_rows: int = 8192):
    if shard_rows < 1:
      raise ConfigError(f"shard_rows must be >= 1, got {shard_rows}")
    self.dir = storage.as_path(directory)
    self.dir.mkdir(parents=True, exist_ok=True)
    self.dim, self.shard_rows = int(dim), int(shard_rows)
    self.meta = _json_roundtrip(meta or {})
    self._lock_key = None
    self._lock_key = acquire(self.dir, "embeddings")
    try:
      self._open()
    except BaseException:
      self.close()
      raise

  def _open(self) -> None:
    manifest = read_manifest(self.dir)
    if manifest is None:
      stray = sorted(p.name for p in self.dir.glob("emb-*.npy"))
      if stray:
        raise InputError(f"embedding shards without a manifest ({', '.join(stray[:3])})", path=str(self.dir))
      manifest = {"format": FORMAT, "dim": self.dim, "dtype": "float32", "meta": self.meta,
                  "shard_rows": self.shard_rows, "shards": [], "rows": 0, "complete": False}
      _write_json_atomic(self.dir / MANIFEST, manifest)
    else:
      for name, want in (("dim", self.dim), ("shard_rows", self.shard_rows), ("meta", self.meta)):
        if manifest.get(name) != want:
          raise ConfigError(f"{self.dir} holds embeddings written with {name}={manifest.get(name)!r}, "
                            f"not {want!r}; use another directory or the original settings")
      for entry in manifest["shards"]:
        for key in ("file", "ids"):
          if not _inside(self.dir, entry, key).is_file():
            raise InputError("committed embedding shard is missing", path=str(self.dir / entry[key]))
    for p in self.dir.glob("*.tmp"):
      p.unlink()  # an uncommitted shard from a killed run
    self._manifest = manifest

  @property
  def num_rows(self) -> int:
    """Rows committed so far (the next shard starts at this corpus row)."""
    return int(self._manifest["rows"])

  @property
  def complete(self) -> bool:
    return bool(self._manifest.get("complete"))

  def write_shard(self, ids: Sequence[str], emb: np.ndarray) -> None:
    """Commits one shard: `ids` (len R) and emb f32[R, dim]."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[1] != self.dim or emb.shape[0] != len(ids):
      raise ValueError(f"shard must be [{len(ids)}, {self.dim}], got {emb.shape}")
    if self.complete:
      raise RuntimeError(f"{self.dir} is already complete")
    i = len(self._manifest["shards"])
    emb_path, ids_path = self.dir / _emb_name(i), self.dir / _ids_name(i)
    npy = io.BytesIO()
    np.save(npy, emb)
    storage.write_bytes_atomic(emb_path, npy.getvalue())   # temp + fsync + rename; gs://: one upload
    storage.write_bytes_atomic(ids_path, json.dumps(list(map(str, ids))).encode())
    self._manifest["shards"].append({"file": emb_path.name, "ids": ids_path.name, "rows": int(emb.shape[0]),
                                     "sha256": _sha256(emb_path)})
    self._manifest["rows"] = self.num_rows + int(emb.shape[0])
    _write_json_atomic(self.dir / MANIFEST, self._manifest)

  def finish(self, **summary: Any) -> dict:
    self._manifest["complete"] = True
    if summary:
      self._manifest["summary"] = _json_roundtrip(summary)
    _write_json_atomic(self.dir / MANIFEST, self._manifest)
    return {"dir": str(self.dir), "rows": self.num_rows, "shards": len(self._manifest["shards"])}

  def close(self) -> None:
    if self._lock_key is not None:
      release(self._lock_key)
      self._lock_key = None

  def __enter__(self) -> EmbeddingStoreWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def is_complete(directory: str | os.PathLike) -> bool:
  manifest = read_manifest(directory)
  return bool(manifest and manifest.get("complete"))


def load_embeddings(directory: str | os.PathLike, *, verify: bool = False,
                    require_complete: bool = True) -> tuple[list[str], np.ndarray]:
  """-> (doc ids, np.float32[N, D]) of every committed shard, in corpus order."""
  root = storage.as_path(directory)
  manifest = read_manifest(root)
  if manifest is None:
    raise InputError("no manifest.json: not an embeddings store (or its job never started)", path=str(root))
  if require_complete and not manifest.get("complete"):
    raise InputError("embeddings are incomplete: run the job that writes them again to finish",
                     path=str(root))
  ids: list[str] = []
  out = np.empty((int(manifest["rows"]), int(manifest["dim"])), np.float32)
  row = 0
  for entry in manifest["shards"]:
    path = _inside(root, entry, "file")
    if verify and _sha256(path) != entry["sha256"]:
      raise InputError("embedding shard does not match its checksum in the manifest", path=str(path))
    arr = np.load(io.BytesIO(path.read_bytes())) if storage.is_remote(path) else np.load(path, mmap_mode="r")
    shard_ids = json.loads(_inside(root, entry, "ids").read_text())
    if arr.shape != (entry["rows"], manifest["dim"]) or len(shard_ids) != entry["rows"]:
      raise InputError(f"shard holds {arr.shape} / {len(shard_ids)} ids, manifest says "
                       f"{entry['rows']} x {manifest['dim']}", path=str(path))
    out[row:row + entry["rows"]] = arr
    ids.extend(shard_ids)
    row += entry["rows"]
  return ids, out
