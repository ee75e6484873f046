"""Local paths and `gs://` URLs behind one small API (etils `epath` over fsspec/gcsfs for gs://).

  root = as_path("gs://bucket/run")        # epath.Path (gcsfs); a local path stays a pathlib.Path
  write_bytes_atomic(root / "x.json", b"{}")  # local: temp + fsync + rename; gs://: one upload
  write_bytes_atomic(root / "y", b"", create_only=True)   # gs://: ifGenerationMatch=0
  lock = ObjectLock(root / ".lock", stage="train").acquire()   # gs:// has no flock
  local_copy("gs://bucket/run/align/export", "EXPORT_DONE.json")  # a local mirror for loaders

Commits: GCS makes every single-object upload atomic (readers see the old object or the new one,
never a part), so an atomic write on gs:// is one upload, with no temp object and no rename. There
is no append on gs://: writers that append locally (the open shard of a sharded output, a done
log) rewrite the whole object from memory instead (qgjax.data.sharded_writer, sampling.done_log).

Locks (gs://): `<dir>/.lock` is an object created with the create-only precondition
(ifGenerationMatch=0) holding host, pid, stage, a token and the time; the holder refreshes the
time every LEASE_S / 4 seconds from a thread and deletes the object on release. A lock is stale
when its holder's lease ran out (LEASE_S without a refresh: the holder died or lost the network)
or when the holder ran on this host under a pid that no longer exists (a killed run resumed on the
same machine takes over at once); a stale lock is replaced, a live one is an InputError naming
its holder. Two takers of a free lock are decided by the server (one create succeeds). After
creating it the taker reads the object back and requires its own token. Not covered: two takers
that read the same stale note within milliseconds of each other (a stale lock is deleted, then
created again; deleting only the stale generation is not in gcsfs' API).

Emulator: gcsfs (and tensorstore for orbax, see qgjax.train.checkpoint) talk to a local GCS JSON
API server through STORAGE_EMULATOR_HOST=http://localhost:<port> (gcsfs then uses anonymous
credentials); GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false skips gcsfs' bucket-layout lookup that an
emulator cannot answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import socket
import threading
import time
import uuid
from typing import Union

from qgjax.errors import InputError

REMOTE_PREFIX = "gs://"
LEASE_S = 120.0           # a gs:// lock not refreshed for this long is stale
AnyPath = Union[pathlib.Path, "epath.Path"]   # noqa: F821 (etils is imported lazily)


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` is a gs:// URL (an epath.Path of one included)."""
  return os.fspath(path).startswith(REMOTE_PREFIX)


def as_path(path: str | os.PathLike) -> AnyPath:
  """A pathlib-like path: `pathlib.Path` for a local path, `epath.Path` (gcsfs) for gs://."""
  if is_remote(path):
    from etils import epath

    filesystem()   # the shared gcsfs instance, its listing cache off
    return epath.Path(os.fspath(path))
  return pathlib.Path(path)


def absolute(path: str | os.PathLike) -> str:
  """`os.path.abspath` for a local path; a gs:// URL unchanged."""
  return os.fspath(path) if is_remote(path) else os.path.abspath(path)


def filesystem():
  """The gcsfs filesystem that epath uses for gs:// (the same instance; it honours
  STORAGE_EMULATOR_HOST), with its listing cache off: another process (a host of a multi-host run,
  a resumed run) may have written since a listing, and a stale one would hide its objects."""
  from etils.epath import backend

  fs = backend.fsspec_backend.fs(REMOTE_PREFIX)
  if fs.dircache.use_listings_cache:
    fs.dircache.use_listings_cache = False
    fs.dircache.clear()
  return fs


def _invalidate(url: str) -> None:
  filesystem().invalidate_cache(url.rsplit("/", 1)[0])


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, create_only: bool = False) -> None:
  """Writes `data` so that readers see the old content or all of the new, never a part.

  Local: `<path>.tmp` (no link followed), fsync, rename, fsync of the directory. gs://: one
  upload. `create_only` refuses (FileExistsError) when `path` exists: on gs:// through the
  ifGenerationMatch=0 precondition, locally through O_EXCL on the final name (no temp file then).
  """
  if is_remote(path):
    url = os.fspath(path)   # gcsfs turns the server's 412 (precondition failed) into FileExistsError
    filesystem().pipe_file(url, bytes(data), mode="create" if create_only else "overwrite")
    _invalidate(url)
    return
  p = pathlib.Path(path)
  target = p if create_only else p.with_name(p.name + ".tmp")
  flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_EXCL if create_only else os.O_TRUNC)
  try:
    fd = os.open(target, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
  except OSError:
    if os.path.islink(target):
      raise InputError("is a symbolic link where qgjax writes its own file; remove it", path=str(target)) from None
    raise
  with os.fdopen(fd, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  if not create_only:
    os.replace(target, p)
  dir_fd = os.open(p.parent, os.O_RDONLY)   # the rename or creation made durable
  try:
    os.fsync(dir_fd)
  except OSError:
    pass
  finally:
    os.close(dir_fd)


def read_bytes(path: str | os.PathLike) -> bytes:
  """The bytes of a file or object (FileNotFoundError when absent)."""
  if is_remote(path):
    return filesystem().cat_file(os.fspath(path))
  with open(path, "rb") as f:
    return f.read()


def remove(path: str | os.PathLike, *, missing_ok: bool = True) -> None:
  """Deletes a file or object."""
  try:
    if is_remote(path):
      filesystem().rm_file(os.fspath(path))
      _invalidate(os.fspath(path))
    else:
      os.unlink(path)
  except FileNotFoundError:
    if not missing_ok:
      raise


def glob(directory: str | os.PathLike, pattern: str) -> list[str]:
  """Paths (str; gs:// URLs for a bucket) in `directory` matching `pattern`, sorted."""
  if is_remote(directory):
    root = os.fspath(directory).rstrip("/")
    filesystem().invalidate_cache(root)
    return sorted(REMOTE_PREFIX + p for p in filesystem().glob(f"{root}/{pattern}"))
  return sorted(str(p) for p in pathlib.Path(directory).glob(pattern))


def upload_dir(local_dir: str | os.PathLike, url: str | os.PathLike, marker: str) -> list[str]:
  """Publishes local directory `local_dir` at remote directory `url` -> the relative names uploaded.

  The remote `marker` object goes first (from then on readers take the directory as absent), then
  every other object under `url`, then each file of `local_dir` is uploaded (one atomic upload
  each) and `local_dir/marker`, when the directory has one, last. A writer that makes its marker
  itself (an export's) writes it after this returns. Readers check the marker
  (`local_copy(url, marker)`), so a kill in the middle leaves a directory that counts as absent."""
  local_dir, url = os.fspath(local_dir), os.fspath(url).rstrip("/")
  files = sorted(os.path.relpath(os.path.join(r, f), local_dir) for r, _, fs in os.walk(local_dir) for f in fs)
  remove(f"{url}/{marker}")
  for old in glob(url, "**"):
    if as_path(old).is_file():
      remove(old)
  for name in [f for f in files if f != marker] + [f for f in files if f == marker]:
    with open(os.path.join(local_dir, name), "rb") as f:
      write_bytes_atomic(f"{url}/{name}", f.read())
  return files


def local_copy(url: str | os.PathLike, marker: str) -> str:
  """A local directory holding the files of remote directory `url` (a local path: itself).

  For loaders that need local files (tokenizers, safetensors, sentence-transformers layouts): the
  copy lives under qgjax.paths.cache_root()/remote/<hash of the url, its `marker` object's bytes
  and generation> (GCS gives every write of an object a new generation), so a new export at the
  same URL gets a new copy; it is filled through a temp directory and renamed into place, and
  reused while the marker object is the same one.
  """
  if not is_remote(url):
    return os.fspath(url)
  from qgjax.paths import cache_root

  url = os.fspath(url).rstrip("/")
  fs = filesystem()
  fs.invalidate_cache(url)
  try:
    generation = str(fs.info(f"{url}/{marker}").get("generation", ""))
    stamp = read_bytes(f"{url}/{marker}")
  except FileNotFoundError:
    raise InputError(f"no {marker} in the remote directory: not a finished export", path=url) from None
  key = hashlib.sha256(f"{url}\0{generation}\0".encode() + stamp).hexdigest()[:20]
  dest = os.path.join(cache_root(), "remote", key)
  if os.path.isfile(os.path.join(dest, marker)):
    return dest
  tmp = f"{dest}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  for obj in fs.find(url):
    rel = obj[len(url[len(REMOTE_PREFIX):]):].lstrip("/")
    if rel == marker:
      continue
    target = os.path.join(tmp, rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fs.get_file(REMOTE_PREFIX + obj, target)
  os.makedirs(tmp, exist_ok=True)
  with open(os.path.join(tmp, marker), "wb") as f:
    f.write(stamp)
  try:
    os.replace(tmp, dest)
  except OSError:   # another process filled it first
    shutil.rmtree(tmp, ignore_errors=True)
  return dest


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def describe_holder(info: dict) -> str:
  """'qgjax <stage> (pid <pid> on <host>)' for a lock's note."""
  return f"qgjax {info.get('stage', '?')} (pid {info.get('pid', '?')} on {info.get('host', '?')})"


class ObjectLock:
  """The one-writer lock of a gs:// directory: a lock object with a lease (see the module doc).

  `path` is the lock object's URL. `acquire()` raises InputError naming the holder when a live
  lock stands there; `release()` stops the refresh thread and deletes the object.
  """

  def __init__(self, path: str | os.PathLike, stage: str, *, lease_s: float = LEASE_S):
    self.path = os.fspath(path)
    self.stage = stage
    self.lease_s = float(lease_s)
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _note(self) -> bytes:
    return json.dumps({"pid": os.getpid(), "stage": self.stage, "host": socket.gethostname(),
                       "token": self.token, "time": time.time()}).encode()

  def read(self) -> dict | None:
    """The holder's note, or None when no lock object stands there."""
    try:
      data = read_bytes(self.path)
    except FileNotFoundError:
      return None
    try:
      info = json.loads(data)
      return info if isinstance(info, dict) else {}
    except ValueError:
      return {}

  def is_stale(self, info: dict) -> bool:
    """Whether a lock note belongs to a holder that is gone (lease ran out, or a dead pid here)."""
    if time.time() - float(info.get("time", 0)) > self.lease_s:
      return True
    return info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1)))

  def acquire(self) -> "ObjectLock":
    where = self.path.rsplit("/", 1)[0]
    info = self.read()
    if info is not None:
      if not self.is_stale(info):
        raise InputError(f"in use by {describe_holder(info)}; one writer per directory: wait for it "
                         "to end or use another directory", path=where)
      remove(self.path)   # a stale lock: its holder is gone
    try:
      write_bytes_atomic(self.path, self._note(), create_only=True)
    except FileExistsError:
      info = self.read() or {}
      raise InputError(f"in use by {describe_holder(info)} (taken just now); one writer per directory",
                       path=where) from None
    mine = self.read()
    if not mine or mine.get("token") != self.token:
      raise InputError(f"in use by {describe_holder(mine or {})} (taken just now); one writer per "
                       "directory", path=where)
    self._thread = threading.Thread(target=self._refresh, name=f"qgjax-lock {self.path}", daemon=True)
    self._thread.start()
    return self

  def _refresh(self) -> None:
    while not self._stop.wait(self.lease_s / 4):
      try:
        info = self.read()
        if not info or info.get("token") != self.token:
          return   # taken over (this process stalled past its lease): leave the new holder alone
        write_bytes_atomic(self.path, self._note())
      except OSError:
        pass       # a network error: try again at the next refresh

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    info = self.read()
    if info and info.get("token") == self.token:
      remove(self.path)


def is_link(path: AnyPath) -> bool:
  """`path.is_symlink()` locally; False on gs:// (objects are never links)."""
  return False if is_remote(path) else pathlib.Path(path).is_symlink()


class AppendObject:
  """A gs:// object opened for appending: the object's bytes (if any) plus what is written, kept in
  memory; `flush()` uploads the whole of it as one object (GCS has no append), so the object is
  always a prefix of what was written, as a flushed local file is."""

  def __init__(self, path: str | os.PathLike, *, encoding: str | None = None):
    self.path = os.fspath(path)
    self.encoding = encoding
    try:
      self.data = bytearray(read_bytes(self.path))
    except FileNotFoundError:
      self.data = bytearray()
    self._flushed = len(self.data)
    self.closed = False

  def write(self, chunk: bytes | str) -> int:
    self.data += chunk.encode(self.encoding or "utf-8") if isinstance(chunk, str) else chunk
    return len(chunk)

  def flush(self) -> None:
    if len(self.data) != self._flushed:
      write_bytes_atomic(self.path, bytes(self.data))
      self._flushed = len(self.data)

  def close(self) -> None:
    if not self.closed:
      self.flush()
      self.closed = True


def sync(f) -> None:
  """Makes what was written to `f` durable: flush + fsync (an AppendObject: its upload)."""
  f.flush()
  if hasattr(f, "fileno"):
    os.fsync(f.fileno())


def resolved(path: str | os.PathLike) -> str:
  """`str(pathlib.Path(path).resolve())` for a local path; a gs:// URL unchanged."""
  return os.fspath(path) if is_remote(path) else str(pathlib.Path(path).resolve())
