"""Optimizer and learning-rate schedule from config (optax).

  config.optim = dict(name="adamw", lr=1e-4, schedule="cosine", warmup_steps=10, end_lr_ratio=0.0,
                      weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, momentum=0.0, grad_clip=1.0, freeze=[])

Every key is read as an attribute: each train config declares the whole group (a missing key is
an error naming it, not a silent default).

  make_schedule(optim, total_steps) -> optax.Schedule (linear warmup, then cosine/linear/constant)

A warmup as long as the run or longer (a short run with a config's default warmup) would
never reach `lr` (one step at warmup_steps=10 trains at lr 0): it is cut to total_steps // 10,
with a warning.
  make_optimizer(optim, total_steps) -> (optax.GradientTransformation, schedule)

Weight decay applies to matrices only (ndim >= 2), not to norms' scales and biases. `freeze`
lists regexes of parameter paths ("a/b/kernel") that get no update and no optimizer state.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import jax
import optax

from qgjax.errors import ConfigError

log = logging.getLogger(__name__)


def make_schedule(optim: Any, total_steps: int) -> optax.Schedule:
  lr = float(optim.lr)
  warmup = int(optim.warmup_steps)
  if total_steps > 0 and warmup >= total_steps:
    log.warning("optim.warmup_steps=%d >= the run's %d steps; using %d warmup steps so the learning rate "
                "reaches optim.lr=%s", warmup, total_steps, total_steps // 10, lr)
    warmup = total_steps // 10
  kind = optim.schedule
  end = lr * float(optim.end_lr_ratio)
  decay_steps = max(int(total_steps) - warmup, 1)
  if kind == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
  elif kind == "linear":
    decay = optax.linear_schedule(lr, end, decay_steps)
  elif kind == "constant":
    decay = optax.constant_schedule(lr)
  else:
    raise ConfigError(f"optim.schedule={kind!r}; expected cosine, linear or constant")
  if warmup <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _decay_mask(params):
  return jax.tree.map(lambda x: getattr(x, "ndim", len(getattr(x, "shape", ()))) >= 2, params)


def make_optimizer(optim: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Clip -> AdamW / Adafactor / SGD with the schedule; frozen paths masked out."""
  schedule = make_schedule(optim, total_steps)
  name = optim.name
  if name == "adamw":
    tx = optax.adamw(schedule, b1=float(optim.b1), b2=float(optim.b2),
                     eps=float(optim.eps), weight_decay=float(optim.weight_decay),
                     mask=_decay_mask)
  elif name == "adafactor":
    tx = optax.adafactor(schedule)
  elif name == "sgd":
    tx = optax.sgd(schedule, momentum=float(optim.momentum) or None)
  else:
    raise ConfigError(f"optim.name={name!r}; expected adamw, adafactor or sgd")
  clip = float(optim.grad_clip or 0.0)
  if clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  patterns = [re.compile(p) for p in (optim.freeze or [])]
  if patterns:
    def labels(params):
      return jax.tree_util.tree_map_with_path(
          lambda path, _: "frozen" if any(p.search(_path_str(path)) for p in patterns) else "train", params)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule
