"""One writer per directory: an exclusive `flock` on `<dir>/.lock`, naming the process that holds it.

  with lock_workdir(config.workdir, "train"):   # a second run on the same workdir: InputError
    ...                                          #   "... is in use by qgjax train (pid 1234) ..."

Every stage that writes takes the lock of the directory it writes (generate/score/mine through
their sharded writers, train, pairs, evaluate on their workdirs). The lock is released by the
kernel when the process dies, so a killed run never leaves a stale lock. Within one process the
lock is re-entrant (a job that locks its workdir may open a sharded writer on the same
directory, while two writers in one process still exclude each other). In a multi-process run only one process should take it (`enabled=is_main_process()`)
when all of them write into one directory.

A gs:// directory has no flock: its lock is a lock object with a lease (qgjax.data.storage.ObjectLock),
deleted on release; a killed holder's lock is taken over when its lease runs out, at once by a
run on the same host (its pid is gone).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
from typing import Iterator

from qgjax.data import storage
from qgjax.data.safe_files import ensure_dir
from qgjax.errors import InputError

LOCK_FILE = ".lock"
_held: dict[str, dict] = {}   # realpath of the directory -> {fd, stage, shares: one flag per holder}
_guard = threading.Lock()


def _holder(fd: int) -> str:
  try:
    data = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    info = json.loads(data)
    return f"qgjax {info.get('stage', '?')} (pid {info.get('pid', '?')} on {info.get('host', '?')})"
  except (OSError, ValueError, AttributeError):
    return "another process"


def acquire(directory: str | os.PathLike, stage: str, *, share: bool = False) -> str:
  """Takes the lock of `directory` (created if missing); returns its key for `release`.

  `share=True` (a job's lock on its workdir) lets this process take the same lock again inside
  (a writer of the job); a holder with `share=False` (a writer) is alone, even in its process.
  """
  path = ensure_dir(directory)
  key = os.fspath(path) if storage.is_remote(path) else os.path.realpath(path)
  with _guard:
    if key in _held:
      entry = _held[key]
      if not entry["shares"][-1]:
        raise InputError(f"in use by qgjax {entry['stage']} (pid {os.getpid()}, this process); one writer "
                         "per directory", path=str(directory))
      entry["shares"].append(share)
      return key
    lock_path = os.path.join(key, LOCK_FILE)
    if storage.is_remote(key):
      _held[key] = {"object": storage.ObjectLock(lock_path, stage).acquire(), "stage": stage, "shares": [share]}
      return key
    try:
      fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as e:
      raise InputError(f"cannot open the lock file: {e.strerror}", path=lock_path) from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      who = _holder(fd)
      os.close(fd)
      raise InputError(f"in use by {who}; one writer per directory: wait for it to end or use "
                       "another directory", path=str(directory)) from None
    info = json.dumps({"pid": os.getpid(), "stage": stage, "host": socket.gethostname()}).encode()
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, info, 0)
    except OSError:
      pass  # the lock holds without its note (a full disk); only the error message is poorer
    _held[key] = {"fd": fd, "stage": stage, "shares": [share]}
    return key


def release(key: str) -> None:
  with _guard:
    entry = _held.get(key)
    if entry is None:
      return
    entry["shares"].pop()
    if entry["shares"]:
      return
    del _held[key]
    if "object" in entry:
      entry["object"].release()
      return
    try:
      fcntl.flock(entry["fd"], fcntl.LOCK_UN)
    finally:
      os.close(entry["fd"])


@contextlib.contextmanager
def lock_workdir(directory: str | os.PathLike, stage: str, *, enabled: bool = True) -> Iterator[None]:
  """Holds the one-writer lock of `directory` for the body (no-op when not `enabled`)."""
  if not enabled:
    yield
    return
  key = acquire(directory, stage, share=True)
  try:
    yield
  finally:
    release(key)
