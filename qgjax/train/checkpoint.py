"""Orbax checkpoints of a train run: async saves, keep the last k and the best by a metric.

  ckpt = Checkpointer(workdir + "/checkpoints", keep=3, best_metric="eval/loss", best_mode="min")
  state = ckpt.restore_or(state, shardings)   # the latest step if any, else `state` unchanged
  ckpt.save(step, state, metrics)             # async; returns at once
  ckpt.close()                                # waits for pending writes

What is saved: {step, trainable params, optimizer state} (the frozen base model is rebuilt from
its checkpoint, so a LoRA run saves megabytes, not the model) plus a small JSON of metadata
(the config fingerprint a resume must match, and the directory it was written in: a run whose
directory was moved or carried elsewhere compares the input paths it saved under the old
location as the same paths under the new one). Saves are atomic (orbax writes to a temporary
directory and renames it), so a run killed mid-save resumes from the previous step.

`directory` may be a gs:// URL: orbax writes it through tensorstore's GCS driver and, where no
rename exists, marks a finished step with its commit_success.txt (a step without it is ignored).
Against an emulator, tensorstore reads TENSORSTORE_GCS_HTTP_URL (the server) and
GOOGLE_AUTH_TOKEN_FOR_TESTING (any token) from the environment.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from typing import Any, Iterator

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from qgjax.data import storage
from qgjax.data.settings_diff import changed_settings, moved_root, relocated
from qgjax.errors import CheckpointMismatchError, QgjaxError

from qgjax.train.step import TrainState


_DISK_FULL = ("No space left on device", "os_error_code='28'", "Disk quota exceeded", "os_error_code='122'")


def _disk_full(exc: BaseException) -> bool:
  """Whether `exc` (or an exception it was raised from) is a full disk: an OSError ENOSPC/EDQUOT, or
  orbax/tensorstore's RESOURCE_EXHAUSTED text that carries the OS error."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if any(s in str(exc) for s in _DISK_FULL):
      return True
    exc = exc.__cause__ or exc.__context__
  return False


class _DropDiskFullReports(logging.Filter):
  """Drops orbax's per-thread ERROR reports (each with a traceback) of a full disk: the save is
  reported once, as a QgjaxError, by `Checkpointer`."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
    return not any(s in text for s in _DISK_FULL)


_UNRETRIEVED_WRITES = _DropDiskFullReports()


def _quiet_unretrieved_writes() -> None:
  """Drops asyncio's "Task exception was never retrieved" reports of orbax writes that hit a full disk.

  A failed save leaves write tasks whose error nobody awaits; asyncio logs each, with a traceback,
  when the task is collected, which can be after the Checkpointer closed (at exit): so the filter
  stays on the "asyncio" logger for the process. Other task errors go through.
  """
  logger = logging.getLogger("asyncio")
  if _UNRETRIEVED_WRITES not in logger.filters:
    logger.addFilter(_UNRETRIEVED_WRITES)


_closed_loop_reports = [0]   # reports dropped by the hook below


def _quiet_closed_loop_reports() -> None:
  """Drops the "Event loop is closed" reports of orbax's writes (counted in _closed_loop_reports).

  After a failed save (a full disk), tensorstore completes the writes orbax stopped awaiting and
  reports each on a closed asyncio loop, a traceback apiece: hundreds, which bury the one line
  that says what happened. They carry nothing that error does not; everything else goes through.
  """
  import sys

  previous = sys.unraisablehook
  if getattr(previous, "__name__", "") == "_qgjax_quiet_hook":
    return

  def hook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
      _closed_loop_reports[0] += 1
      return
    previous(unraisable)

  hook.__name__ = "_qgjax_quiet_hook"
  sys.unraisablehook = hook


def _saved(state: TrainState) -> dict:
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` (see module docstring)."""

  def __init__(self, directory: str, *, keep: int = 3, best_metric: str | None = None, best_mode: str = "min",
               save_every: int = 1, fingerprint: dict | None = None, async_save: bool = True):
    self.directory = storage.absolute(directory)
    self.best_metric = best_metric
    self.fingerprint = fingerprint or {}
    policies = [pp.LatestN(n=max(1, int(keep)))]
    self._sign = 1.0 if best_mode == "max" else -1.0
    if best_metric:
      # BestN keeps the n largest values of get_metric_fn; keep the best by `best_mode`.
      policies.append(pp.BestN(get_metric_fn=lambda m: self._sign * float(m[best_metric]), n=1,
                               keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(1, int(save_every)),
        # best_fn makes orbax write each step's metrics to disk (for best_step after a restart).
        best_fn=(lambda m: self._sign * float(m[best_metric])) if best_metric else None,
        preservation_policy=pp.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))
    self._log_filter = _DropDiskFullReports()
    logging.getLogger("absl").addFilter(self._log_filter)
    _quiet_closed_loop_reports()
    _quiet_unretrieved_writes()

  @contextlib.contextmanager
  def _writing(self, what: str) -> Iterator[None]:
    """A full disk while orbax writes (here or in its background threads) -> one QgjaxError line."""
    try:
      yield
    except Exception as e:
      if _disk_full(e):
        with contextlib.suppress(Exception):   # stop orbax's threads now
          self.manager.close()
        raise QgjaxError(f"disk full while {what} in {self.directory}: free space and run the same command "
                         "again (it resumes from the last complete checkpoint)") from None
      raise

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the best `best_metric` (None without a metric or before one is saved)."""
    if not self.best_metric:
      return None
    scored = []
    for step in self.manager.all_steps():
      m = self.manager.metrics(step) or {}
      if self.best_metric in m:
        scored.append((self._sign * float(m[self.best_metric]), step))
    return max(scored)[1] if scored else None

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: TrainState, metrics: dict | None = None, *, force: bool = False) -> bool:
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    if self.best_metric and self.best_metric not in metrics:
      metrics = None  # kept by LatestN only; never ranked as "best"
    with self._writing(f"saving checkpoint {int(step)}"):
      return self._save(step, state, metrics, force)

  def _save(self, step: int, state: TrainState, metrics: dict | None, force: bool) -> bool:
    return self.manager.save(
        int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(_saved(state)),
                                           meta=ocp.args.JsonSave({"fingerprint": self.fingerprint,
                                                                   "step": int(step),
                                                                   "directory": self.directory})),
        metrics=metrics, force=force)

  def restore(self, step: int, state: TrainState, shardings: TrainState) -> TrainState:
    """Restores `step` into the structure, dtypes and shardings of `state`."""
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    saved_fp = (meta or {}).get("fingerprint", {})
    saved_in = (meta or {}).get("directory")
    if saved_in and saved_in != self.directory:   # the run's directory moved (or was carried): so did its inputs
      saved_fp = relocated(saved_fp, *moved_root(saved_in, self.directory))
    changed = changed_settings({k: saved_fp.get(k) for k in self.fingerprint}, self.fingerprint)
    if changed:
      lines = "; ".join(changed)
      raise CheckpointMismatchError(
          f"{self.directory}/{step} was written by a different run (checkpoint -> config: {lines}); "
          f"use a new workdir or restore the old settings")
    target = _saved(state)
    target_shardings = {"step": shardings.step, "params": shardings.params, "opt_state": shardings.opt_state}
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, target_shardings)
    problems = self._tree_mismatch(step, abstract)
    if problems:
      raise CheckpointMismatchError(f"{self.directory}/{step} does not fit this model/optimizer: {problems}")
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointMismatchError(f"{self.directory}/{step} does not fit this model/optimizer: {e}") from None
    return state.replace(step=restored["step"], params=restored["params"], opt_state=restored["opt_state"])

  def _tree_mismatch(self, step: int, abstract: Any) -> str:
    """'' when the stored tensors match `abstract` by path and shape, else which do not (up to 5 each)."""
    try:
      stored = ocp.StandardCheckpointer().metadata(os.path.join(self.directory, str(step), "state"))
    except Exception:   # an older or foreign layout: leave the check to the restore itself
      return ""
    stored = getattr(getattr(stored, "item_metadata", stored), "tree", stored)

    def by_path(tree) -> dict[str, tuple]:   # "params.dense.kernel" -> shape
      return {jax.tree_util.keystr(p, simple=True, separator="."): tuple(x.shape)
              for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if hasattr(x, "shape")}

    have, want = by_path(stored), by_path(abstract)
    if not have:
      return ""
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    misshaped = sorted(f"{k} {have[k]} stored vs {want[k]} here" for k in set(want) & set(have) if have[k] != want[k])
    parts = [f"{name}: {', '.join(items[:5])}" + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
             for name, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if items]
    return "; ".join(parts)

  def restore_or(self, state: TrainState, shardings: TrainState) -> TrainState:
    step = self.latest_step()
    return state if step is None else self.restore(step, state, shardings)

  def wait(self) -> None:
    with self._writing("finishing a checkpoint"):
      self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      with self._writing("finishing a checkpoint"):
        self.manager.wait_until_finished()
        self.manager.close()
    finally:
      logging.getLogger("absl").removeFilter(self._log_filter)


def write_json(path: str, obj: Any) -> None:
  """Atomic small-JSON write (temp file + rename; gs://: one upload), for run summaries beside the checkpoints."""
  storage.write_bytes_atomic(path, json.dumps(obj, indent=2, default=str).encode("utf-8"))
