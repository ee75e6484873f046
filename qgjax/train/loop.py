"""The training loop shared by every task: sharded state, resume, steps, eval, checkpoints, export.

A task builds a `TaskSetup` (what to train and on what); `fit(setup, config)` runs it:
mesh and rules from config -> optimizer -> state created sharded -> restore the latest
checkpoint in `config.workdir` (if any) -> `train_step` per global batch from `setup.train`
(random access by step, so a resumed run sees the same batches) -> every `eval_every` steps
the eval set's mean metrics -> async checkpoints (last k + best) -> export at the end.

Per-step metrics go to `<workdir>/metrics.jsonl` (process 0): one JSON line per logged step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax

from qgjax.data import storage
from qgjax.data.progress import progress
from qgjax.data.safe_files import open_append
from qgjax.data.workdir_lock import lock_workdir
from qgjax.parallel.distributed import is_main_process
from qgjax.parallel.backend import model_numerics
from qgjax.parallel.mesh import mesh_from_config
from qgjax.parallel.sharding import batch_devices, put_batch, rules_for
from qgjax.train.checkpoint import Checkpointer, write_json
from qgjax.train.data import StepLoader
from qgjax.train.export import is_complete_export, write_export
from qgjax.train.optim import make_optimizer
from qgjax.train.step import create_state, make_eval_step, make_train_step, state_shardings

from qgjax.errors import ConfigError


@dataclasses.dataclass
class TaskSetup:
  """What a task hands to `fit`."""
  trainable: Any                 # host tree the optimizer updates
  frozen: Any                    # host tree the loss reads ({} when none)
  abstract_trainable: Any        # boxed abstract trees (logical axis names) of both
  abstract_frozen: Any
  loss_fn: Callable              # (params, frozen, batch) -> (loss, metrics)
  train: StepLoader
  eval: StepLoader | None = None
  export: Callable | None = None  # (params, frozen, out_dir) -> out_dir
  fingerprint: dict = dataclasses.field(default_factory=dict)
  info: dict = dataclasses.field(default_factory=dict)


def _trim_metrics(path: str, start: int) -> None:
  """Keeps metrics.jsonl's records up to the restored step (a resume logs the later ones again)."""
  try:
    lines = storage.read_bytes(path).decode("utf-8").splitlines(keepends=True)
  except FileNotFoundError:
    return
  kept = []
  for line in lines:
    try:
      step = int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
      continue   # a line torn by the kill
    if step <= start:
      kept.append(line if line.endswith("\n") else line + "\n")
  storage.write_bytes_atomic(path, "".join(kept).encode("utf-8"))


def total_steps(config: Any, loader: StepLoader) -> int:
  """num_steps when > 0, else num_epochs x steps per epoch; ConfigError when that is no step at all."""
  steps = int(config.num_steps or 0)
  if steps < 0:
    raise ConfigError(f"config.num_steps must be >= 0 (0: use num_epochs); got {steps}")
  if steps == 0:
    epochs = float(config.num_epochs)
    steps = int(round(epochs * loader.steps_per_epoch))
    if steps < 1:
      raise ConfigError(f"config.num_epochs={epochs} x {loader.steps_per_epoch} steps per epoch is no step; "
                        "set num_epochs > 0 or num_steps")
  return steps


def optimizer_settings(config: Any) -> dict:
  """The settings a resumed run must share with its checkpoint beyond the task's own: the optimizer
  (config.optim, all of it: the schedule and state depend on every key) and gradient accumulation."""
  optim = config.optim.to_dict()
  return {"optim": json.loads(json.dumps(optim, default=str)), "accum_steps": int(config.accum_steps or 1)}


def model_settings(config: Any) -> dict:
  """The model group (name, dtype, init, overrides, ...) a resumed run must share with its checkpoint:
  a LoRA or soft-prompt checkpoint restores onto any base of the same shapes, so another base model
  or dtype would otherwise resume silently. `remat` and `attention_impl` are left out (they change
  memory and the kernel, not the function computed)."""
  model = config.model.to_dict()
  kept = {k: v for k, v in model.items() if k not in ("remat", "attention_impl")}
  return {"model": json.loads(json.dumps(kept, default=str))}


def fit(setup: TaskSetup, config: Any) -> dict:
  """Trains to `num_steps` (or `num_epochs`), resuming from `config.workdir`; returns a summary.

  Holds the workdir's one-writer lock (process 0) for the whole run: a second run on the same
  workdir stops at once with the pid of the first.
  """
  workdir = storage.absolute(config.workdir)
  with lock_workdir(workdir, "train", enabled=is_main_process()):
    return _fit(setup, config, workdir)


def _host(metrics: dict) -> dict:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


_total = jax.jit(lambda x: x.sum())


def evaluate(eval_step, state, loader: StepLoader, mesh, rules) -> dict:
  """Weighted mean of the eval metrics over one file-order pass of `loader`."""
  sums: dict[str, float] = {}
  total = 0.0
  for s in range(loader.steps_per_epoch):
    batch = put_batch(loader.batch(s), mesh, rules)
    w = float(_total(batch["weight"]))  # the global batch's weight: a host holds only its own rows
    m = _host(eval_step(state, batch))
    for k, v in m.items():
      sums[k] = sums.get(k, 0.0) + v * w
    total += w
  return {f"eval/{k}": v / max(total, 1e-9) for k, v in sums.items()}


def _fit(setup: TaskSetup, config: Any, workdir: str) -> dict:
  mesh = mesh_from_config(config)
  rules = rules_for(mesh, config.sharding_rules)
  loader = setup.train
  if loader.batch_size % batch_devices(mesh, rules):
    raise ConfigError(f"batch_size {loader.batch_size} must divide by the {batch_devices(mesh, rules)} "
                      f"devices the batch is split over (mesh {dict(mesh.shape)})")
  accum = int(config.accum_steps or 1)
  if loader.batch_size % (accum * batch_devices(mesh, rules)):
    raise ConfigError(f"batch_size {loader.batch_size} must divide by accum_steps x batch devices "
                      f"= {accum * batch_devices(mesh, rules)}")
  steps = total_steps(config, loader)
  tx, schedule = make_optimizer(config.optim, steps)
  shardings = state_shardings(setup.abstract_trainable, setup.abstract_frozen, tx, mesh, rules)
  state = create_state(setup.trainable, setup.frozen, shardings, tx, mesh, rules)

  ck_cfg = config.checkpoint
  fingerprint = dict(setup.fingerprint, num_steps=steps, **optimizer_settings(config), **model_settings(config))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=int(ck_cfg.keep),
                      best_metric=ck_cfg.best_metric if setup.eval is not None else None,
                      best_mode=ck_cfg.best_mode, fingerprint=fingerprint,
                      async_save=bool(ck_cfg.async_save))
  state = ckpt.restore_or(state, shardings)
  start = int(jax.device_get(state.step))

  example = loader.batch(0)
  train_step = make_train_step(setup.loss_fn, tx, schedule, mesh=mesh, rules=rules, shardings=shardings,
                               example_batch=example, accum_steps=accum)
  eval_step = (make_eval_step(setup.loss_fn, mesh=mesh, rules=rules, shardings=shardings,
                              example_batch=setup.eval.batch(0)) if setup.eval is not None else None)
  log_every = max(1, int(config.log_every))
  eval_every = int(config.eval_every or 0)
  save_every = max(1, int(ck_cfg.every))
  main = is_main_process()
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if main:
    _trim_metrics(metrics_path, start)
  log = open_append(metrics_path, "a") if main else None
  history: list[dict] = []
  last_eval: dict = {}
  t0 = time.perf_counter()
  bar = progress(total=steps, desc=f"train {config.task}", unit="step", initial=start)
  try:
    for step in range(start, steps):
      batch = put_batch(loader.batch(step), mesh, rules)
      state, metrics = train_step(state, batch)
      done = step + 1
      bar.update(1)
      record = None
      if done % log_every == 0 or done == steps or done == start + 1:
        record = {"step": done, **_host(metrics)}
      if eval_step is not None and eval_every and (done % eval_every == 0 or done == steps):
        last_eval = evaluate(eval_step, state, setup.eval, mesh, rules)
        record = {"step": done, **(record or _host(metrics)), **last_eval}
      if record is not None:
        elapsed = time.perf_counter() - t0
        record["examples_per_s"] = (done - start) * loader.batch_size / max(elapsed, 1e-9)
        history.append(record)
        if log is not None:
          log.write(json.dumps(record) + "\n")
          log.flush()
          bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "eval/loss") if k in record})
      if done % save_every == 0 or done == steps:
        ckpt.save(done, state, last_eval if (last_eval and record and "eval/loss" in record) else None,
                  force=done == steps)
  finally:
    bar.close()
    ckpt.wait()
    if log is not None:
      log.close()
  elapsed = time.perf_counter() - t0
  summary = {"task": config.task, "workdir": workdir, "steps": steps, "resumed_from": start,
             "mesh": dict(mesh.shape), "checkpoints": ckpt.all_steps(), "best_step": ckpt.best_step(),
             "seconds": round(elapsed, 2),
             "examples_per_s": round((steps - start) * loader.batch_size / max(elapsed, 1e-9), 3),
             "final": history[-1] if history else {},
             **dict(zip(("dtype", "attention"), model_numerics(config.model))), **setup.info}
  if setup.export is not None and config.export.enabled:
    out = config.export.dir or os.path.join(workdir, "export")
    if steps > start or not is_complete_export(out):
      # Every process takes part (the parameters are gathered across hosts); process 0 writes,
      # into <out>.partial, renamed into place, then the marker (see qgjax.train.export).
      summary["export"] = write_export(lambda d: setup.export(state.params, state.frozen, d), out,
                                       info={"task": config.task, "step": steps}, main=main)
  ckpt.close()
  if main:
    write_json(os.path.join(workdir, "summary.json"), summary)
  return summary
