"""Paths and files an output directory can trust: joins that stay inside, writes that never follow links.

  path = join_inside(out_dir, entry["file"], source=out_dir / "manifest.json")   # InputError if it escapes
  with open_no_follow(out_dir / "x.jsonl.tmp", "wb") as f: ...                    # InputError on a symlink
  write_json_atomic(out_dir / "manifest.json", obj)                               # temp file + fsync + rename

A manifest or an index names files relative to its own directory; `join_inside` refuses an
absolute name, a `..` that climbs out, or a symlink that points out, so a crafted manifest cannot
make a job read (and copy out) a file elsewhere. The files a job creates itself (temp shards,
temp manifests, logs) are opened with O_NOFOLLOW: a link planted under such a name is an error,
never a way to truncate the file it points to.
"""

from __future__ import annotations

import json
import os
import pathlib
import posixpath
from typing import Any

from qgjax.data import storage
from qgjax.errors import InputError


def join_inside(root: str | os.PathLike, name: str, *, source: str | os.PathLike | None = None,
                follow_links: bool = True) -> pathlib.Path:
  """`root / name`, required to resolve (symlinks included) to a path inside `root`.

  `source` (the manifest or index that named the file) goes into the error message.
  `follow_links=False` checks the name alone (no absolute path, no `..` out of `root`) and lets a
  link inside `root` point anywhere (a model directory of the HF cache links into its blobs).
  """
  root_p = storage.as_path(root)
  where = str(source if source is not None else root_p)
  if not isinstance(name, str) or not name or "\x00" in name:
    raise InputError(f"invalid file name {name!r}", path=where)
  if os.path.isabs(name) or storage.is_remote(name):
    raise InputError(f"file {name!r} is an absolute path; entries must be relative to {root_p}", path=where)
  if storage.is_remote(root_p):   # object names: no links, so the name alone decides
    real = posixpath.normpath(posixpath.join("/root", name))
    if not real.startswith("/root/"):
      raise InputError(f"file {name!r} resolves outside {root_p}", path=where)
    return root_p / name
  path = root_p / name
  if follow_links:
    real_root, real = os.path.realpath(root_p), os.path.realpath(path)
  else:
    real_root = os.path.abspath(root_p)
    real = os.path.normpath(os.path.join(real_root, name))
  if os.path.commonpath([real_root, real]) != real_root or real == real_root:
    raise InputError(f"file {name!r} resolves outside {root_p}", path=where)
  return path


_MODES = {"wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
          "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
          "rb": os.O_RDONLY, "r": os.O_RDONLY, "r+b": os.O_RDWR, "a+": os.O_RDWR | os.O_CREAT}


def open_no_follow(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None):
  """`open(path, mode)` that refuses (InputError) when `path` itself is a symbolic link."""
  try:
    fd = os.open(path, _MODES[mode] | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
  except OSError as e:
    if os.path.islink(path):
      raise InputError("is a symbolic link where qgjax writes its own file; remove it "
                       "(qgjax never creates one)", path=str(path)) from None
    raise
  if "b" in mode:
    return os.fdopen(fd, mode)
  return os.fdopen(fd, mode, encoding=encoding or "utf-8")


def open_append(path: str | os.PathLike, mode: str = "ab", encoding: str | None = None):
  """`open_no_follow(path, mode)` for appending; a storage.AppendObject for a gs:// URL."""
  if storage.is_remote(path):
    return storage.AppendObject(path, encoding=encoding)
  return open_no_follow(path, mode, encoding=encoding)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, sort_keys: bool = True,
                      default: Any = None) -> None:
  """Writes `obj` as JSON to `path` through `<path>.tmp` (no link followed), fsync and an atomic rename
  (a gs:// URL: one upload, atomic on GCS)."""
  if storage.is_remote(path):
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n"
    storage.write_bytes_atomic(path, text.encode("utf-8"))
    return
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  with open_no_follow(tmp, "w") as f:
    json.dump(obj, f, indent=indent, sort_keys=sort_keys, default=default)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  fsync_dir(path.parent)


def fsync_dir(path: str | os.PathLike) -> None:
  """fsync of a directory (makes a rename in it durable); a no-op where the OS cannot."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def ensure_dir(path: str | os.PathLike, *, what: str = "output directory") -> pathlib.Path:
  """Creates directory `path` (and parents); a ConfigError when a regular file stands there.

  A gs:// URL -> its epath.Path (GCS has no directories to create; an object named like it is the error)."""
  from qgjax.errors import ConfigError

  p = storage.as_path(path)
  if storage.is_remote(p):
    if p.is_file():
      raise ConfigError(f"{what} {str(p)!r} exists and is not a directory")
    return p
  if p.exists() and not p.is_dir():
    raise ConfigError(f"{what} {str(p)!r} exists and is not a directory")
  try:
    p.mkdir(parents=True, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    raise ConfigError(f"{what} {str(p)!r} cannot be created: a file stands on its path") from None
  return p
