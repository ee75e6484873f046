"""A stage's ConfigDict: its group's config file + the group's `set` values + the recipe's wiring.

  cfg = stage_config(pipeline_config, stage, stage_dir)     # stage_dir: stage name -> directory

The group's config file is `<group>.config` (e.g. "score.py:tiny", relative to `configs_dir`);
`<group>.set` overrides its keys; the wiring (paths between stages, the models, the collection)
always wins, and a `set` value for a wired key is a ConfigError naming both.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import ml_collections

from qgjax.config import load_config_file, nearest_key
from qgjax.errors import ConfigError
from qgjax.pipeline.stage import Stage

ConfigDict = ml_collections.ConfigDict


def _group(p, name: str) -> ConfigDict:
  if name not in p or not isinstance(p[name], ConfigDict):
    raise ConfigError(f"pipeline config needs a group '{name}' (with `config` and `set`)")
  return p[name]


def _config_spec(p, group: str) -> str:
  spec = _group(p, group).get("config", "")
  if not spec:
    raise ConfigError(f"pipeline config key '{group}.config' must name a config file, e.g. '{group}.py'")
  path, sep, arg = spec.partition(".py:")
  path = path if sep else spec
  if sep:
    path += ".py"
  if not os.path.isabs(path) and not os.path.isfile(path):
    path = os.path.join(p.configs_dir, path)
  return path + (":" + arg if sep else "")


def _assign(cfg: ConfigDict, dotted: str, value: Any, where: str) -> None:
  """cfg.<dotted> = value; the key must already exist in the stage's config file."""
  parts = dotted.split(".")
  node = cfg
  for i, part in enumerate(parts):
    if not isinstance(node, ConfigDict) or part not in node:
      valid = node.keys() if isinstance(node, ConfigDict) else []
      raise ConfigError(f"{where}: the stage config has no key '{'.'.join(parts[:i + 1])}'; "
                        f"{nearest_key(part, valid)}")
    if i < len(parts) - 1:
      node = node[part]
  if isinstance(value, ConfigDict):
    value = ConfigDict(value.to_dict())
  elif isinstance(node[parts[-1]], (list, tuple)) and isinstance(value, (list, tuple)):
    value = type(node[parts[-1]])(value)
  try:
    with node.ignore_type():
      node[parts[-1]] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{where}: cannot set '{dotted}' to {value!r}: {e}") from None


def _leaves(node: ConfigDict, prefix: str = "") -> list[tuple[str, Any]]:
  out = []
  for key, value in node.items():
    dotted = f"{prefix}{key}"
    if isinstance(value, ConfigDict) and len(value):
      out += _leaves(value, dotted + ".")
    else:
      out.append((dotted, value))
  return out


def stage_config(p, stage: Stage, stage_dir: Callable[[str], str]) -> ConfigDict:
  """The ConfigDict that `qgjax.jobs.<stage.job>.run` gets for `stage`."""
  at = lambda name: stage_dir(stage.name if name == "self" else name)
  cfg = load_config_file(_config_spec(p, stage.groups[0]))
  wiring = stage.wire(p, at)
  for group in stage.groups:
    for dotted, value in _leaves(_group(p, group).get("set", ConfigDict())):
      where = f"pipeline key '{group}.set.{dotted}' (stage {stage.name})"
      if any(dotted == w or dotted.startswith(w + ".") or w.startswith(dotted + ".") for w in wiring):
        raise ConfigError(f"{where}: '{dotted}' is wired by the pipeline (paths, models, data); "
                          "set the pipeline's own key (workdir, data_dir, generator, encoder, split) instead")
      _assign(cfg, dotted, value, where)
  for dotted, value in wiring.items():
    _assign(cfg, dotted, value, f"stage {stage.name} ({stage.groups[0]}.config)")
  return cfg


def default_config(p, stage: Stage) -> ConfigDict:
  """The stage's config file as it is (its `:arg` included): no `set` values, no wiring."""
  return load_config_file(_config_spec(p, stage.groups[0]))


def group_config(p, group: str) -> ConfigDict:
  """A group's config file with its `set` values, no wiring (e.g. the generate group's prompt,
  which DPO must score exactly as the queries were sampled)."""
  cfg = load_config_file(_config_spec(p, group))
  for dotted, value in _leaves(_group(p, group).get("set", ConfigDict())):
    _assign(cfg, dotted, value, f"pipeline key '{group}.set.{dotted}'")
  return cfg
