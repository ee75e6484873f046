"""Value checks every config passes when it is read (`qgjax.config.build_config`).

Settings are checked by name wherever they sit in the config (a stage config, or a stage's
group inside a pipeline config), so a bad value stops the run at once with one line naming
its key, instead of a traceback deep inside a job:

  batch_size, *.batch_size, shard_size, shard_rows, depth   ints >= 1
  buckets, *_buckets                                         lists of ints >= 1 (may be empty)
  num_steps >= 0, num_epochs >= 0, and not both 0 where both are present
  output_dir, workdir                                        not an existing regular file
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import ml_collections

from qgjax.errors import ConfigError

_POSITIVE_INTS = ("batch_size", "shard_size", "shard_rows", "depth")


def _as_int(value: Any, key: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, float, str)):
    raise ConfigError(f"config.{key} must be an integer; got {value!r}")
  try:
    as_float = float(value)
  except ValueError:
    raise ConfigError(f"config.{key} must be an integer; got {value!r}") from None
  if as_float != int(as_float):
    raise ConfigError(f"config.{key} must be an integer; got {value!r}")
  return int(as_float)


def _as_number(value: Any, key: str) -> float:
  if isinstance(value, bool):
    raise ConfigError(f"config.{key} must be a number; got {value!r}")
  try:
    return float(value)
  except (TypeError, ValueError):
    raise ConfigError(f"config.{key} must be a number; got {value!r}") from None


def _check_node(node: ml_collections.ConfigDict, prefix: str) -> None:
  keys = list(node.keys())
  for name in keys:
    value = node[name]
    key = f"{prefix}{name}"
    if isinstance(value, ml_collections.ConfigDict):
      _check_node(value, key + ".")
      continue
    if value is None:
      continue
    if name in _POSITIVE_INTS:
      if _as_int(value, key) < 1:
        raise ConfigError(f"config.{key} must be >= 1; got {value!r}")
    elif name == "buckets" or name.endswith("_buckets"):
      items = value if isinstance(value, (list, tuple)) else [value]
      for item in items:
        if _as_int(item, key) < 1:
          raise ConfigError(f"config.{key} must list lengths >= 1; got {list(items)!r}")
    elif name in ("num_steps", "num_epochs"):
      if _as_number(value, key) < 0:
        raise ConfigError(f"config.{key} must be >= 0; got {value!r}")
    elif name in ("output_dir", "workdir") and isinstance(value, str) and value:
      if os.path.exists(value) and not os.path.isdir(value):
        raise ConfigError(f"config.{key} = {value!r} is an existing file, not a directory")
  if "num_steps" in keys and "num_epochs" in keys:
    steps, epochs = node["num_steps"], node["num_epochs"]
    if steps is not None and epochs is not None and float(steps) <= 0 and float(epochs) <= 0:
      raise ConfigError(f"config.{prefix}num_steps and config.{prefix}num_epochs are both 0: set one "
                        "of them to how long to train")


def check_values(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first key whose value no job can run with (see module doc)."""
  _check_node(config, "")


def settings_from_config(cls, cfg: Mapping | None, what: str):
  """`cls(**cfg)` for a settings dataclass; a key that is not one of its fields is a ConfigError
  naming `what` (e.g. "mining") and the known keys."""
  cfg = dict(cfg or {})
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(cfg) - names)
  if unknown:
    raise ConfigError(f"unknown {what} setting(s) {unknown}; known: {sorted(names)}")
  return cls(**cfg)
