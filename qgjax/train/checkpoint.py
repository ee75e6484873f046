"""Orbax checkpoints of a train run: async saves, keep the last k and the best by a metric.

  ckpt = Checkpointer(workdir + "/checkpoints", keep=3, best_metric="eval/loss", best_mode="min")
  state = ckpt.restore_or(state, shardings)   # the latest step if any, else `state` unchanged
  ckpt.save(step, state, metrics)             # async; returns at once
  ckpt.close()                                # waits for pending writes

What is saved: {step, trainable params, optimizer state} (the frozen base model is rebuilt from
its checkpoint, so a LoRA run saves megabytes, not the model) plus a small JSON of metadata
(the config fingerprint a resume must match). Saves are atomic (orbax writes to a temporary
directory and renames it), so a run killed mid-save resumes from the previous step.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from qgjax.errors import CheckpointMismatchError

from qgjax.train.step import TrainState


def _saved(state: TrainState) -> dict:
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` (see module docstring)."""

  def __init__(self, directory: str, *, keep: int = 3, best_metric: str | None = None, best_mode: str = "min",
               save_every: int = 1, fingerprint: dict | None = None, async_save: bool = True):
    self.directory = os.path.abspath(directory)
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
    return self.manager.save(
        int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(_saved(state)),
                                           meta=ocp.args.JsonSave({"fingerprint": self.fingerprint,
                                                                   "step": int(step)})),
        metrics=metrics, force=force)

  def restore(self, step: int, state: TrainState, shardings: TrainState) -> TrainState:
    """Restores `step` into the structure, dtypes and shardings of `state`."""
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    saved_fp = (meta or {}).get("fingerprint", {})
    diff = {k: (saved_fp.get(k), v) for k, v in self.fingerprint.items() if saved_fp.get(k) != v}
    if diff:
      lines = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(diff.items()))
      raise CheckpointMismatchError(
          f"{self.directory}/{step} was written by a different run ({lines}); "
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
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def write_json(path: str, obj: Any) -> None:
  """Atomic small-JSON write (temp file + rename), for run summaries beside the checkpoints."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=str)
  os.replace(tmp, path)
