"""Exports that are whole or absent: written to a temporary directory, renamed into place, marked last.

  write_export(lambda d: save_decoder_hf(params, cfg, tok, d), "runs/align/export", info={"step": 8})
  is_complete_export("runs/align/export")   # True only once the marker is written

Layout while and after writing (`out` = the export directory):

  <out>.partial/               the export being written (removed and rewritten by a rerun)
  <out>/                       the finished files, renamed into place in one step
  <out>/EXPORT_DONE.json       the marker, written last: {"format", "files", "info"}

A run killed at any moment leaves either the previous complete export, or a directory without
the marker, which `is_complete_export` reports as incomplete and a rerun of the training job
writes again from its last checkpoint. Only process 0 writes; every process calls `export_fn`
(parameters may be gathered across hosts).

A gs:// `out` (no rename there): `export_fn` writes into a local temp directory, the old marker is
deleted first (from then on the export counts as absent), the old objects under `out` are deleted,
the files uploaded, and the marker uploaded last. Loaders read such an export through a local copy
(qgjax.data.storage.local_copy, keyed by the URL and the marker).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable

from qgjax.data import storage
from qgjax.data.safe_files import fsync_dir, write_json_atomic
from qgjax.data.settings_diff import relocated

EXPORT_MARKER = "EXPORT_DONE.json"
FORMAT = "qgjax.export/1"


def is_complete_export(path: str | os.PathLike) -> bool:
  """Whether `path` is an export whose writer finished (its marker exists, as a regular file)."""
  marker = os.path.join(os.fspath(path), EXPORT_MARKER)
  if storage.is_remote(path):
    return storage.as_path(marker).is_file()
  return os.path.isdir(path) and os.path.isfile(marker) and not os.path.islink(marker)


def _remove(path: str) -> None:
  if os.path.islink(path) or os.path.isfile(path):
    os.unlink(path)
  elif os.path.isdir(path):
    shutil.rmtree(path)


def write_export(export_fn: Callable[[str], Any], out_dir: str, *, info: dict | None = None,
                 main: bool = True) -> Any:
  """Runs `export_fn(tmp_dir)`, renames tmp_dir to `out_dir` (replacing an old one), writes the marker.

  Returns what `export_fn` returned, with paths under `tmp_dir` moved under `out_dir` (in nested
  dicts and lists too: qgjax.data.settings_diff.relocated). `main`: whether this process writes
  (the others only call `export_fn`).
  """
  if storage.is_remote(out_dir):
    return _write_remote_export(export_fn, os.fspath(out_dir).rstrip("/"), info=info, main=main)
  out_dir = os.path.abspath(os.fspath(out_dir))
  tmp = out_dir + ".partial"
  old = out_dir + ".old"
  if main:
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    _remove(tmp)   # a partial export of a killed run
    _remove(old)
  result = export_fn(tmp)
  if not main:
    return relocated(result, tmp, out_dir)
  if not os.path.isdir(tmp):
    raise RuntimeError(f"the export function wrote nothing to {tmp}")
  files = sorted(os.path.relpath(os.path.join(r, f), tmp) for r, _, fs in os.walk(tmp) for f in fs)
  if os.path.lexists(out_dir):
    os.replace(out_dir, old) if os.path.isdir(out_dir) and not os.path.islink(out_dir) else os.unlink(out_dir)
  os.replace(tmp, out_dir)
  fsync_dir(os.path.dirname(out_dir))
  _remove(old)
  write_json_atomic(os.path.join(out_dir, EXPORT_MARKER), {"format": FORMAT, "files": files, "info": info or {}},
                    default=str)
  return relocated(result, tmp, out_dir)


def _write_remote_export(export_fn: Callable[[str], Any], url: str, *, info: dict | None, main: bool) -> Any:
  """`write_export` to a gs:// URL: a local temp directory, uploaded file by file, the marker last."""
  with tempfile.TemporaryDirectory(prefix="qgjax-export-") as tmp:
    result = export_fn(tmp)
    if not main:
      return relocated(result, tmp, url)
    if not any(fs for _, _, fs in os.walk(tmp)):
      raise RuntimeError(f"the export function wrote nothing to {tmp}")
    files = storage.upload_dir(tmp, url, EXPORT_MARKER)   # the old marker goes first: the export is absent
    write_json_atomic(f"{url}/{EXPORT_MARKER}", {"format": FORMAT, "files": files, "info": info or {}},
                      default=str)
    return relocated(result, tmp, url)

