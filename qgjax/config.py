"""Config files and command-line overrides (big_vision style).

A config is a Python file under `configs/` with `get_config(arg=None) -> ConfigDict`.
`path.py:arg` passes `arg` (e.g. `"variant=tiny,n=5"`) to `get_config`; `parse_arg` turns it
into a typed ConfigDict. `--config.a.b=value` overrides any existing key; a misspelt key is a
`ConfigError` naming the key and the nearest valid one.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import inspect
import os
from typing import Any, Iterable

import ml_collections

from qgjax.errors import ConfigError

ConfigDict = ml_collections.ConfigDict


def nearest_key(key: str, valid: Iterable[str]) -> str:
  valid = sorted(valid)
  close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
  if close:
    return f"did you mean '{close[0]}'?"
  return "valid keys: " + ", ".join(valid) if valid else "this level has no keys"


def _parse_literal(text: str) -> Any:
  """'3' -> 3, '0.1' -> 0.1, 'true' -> True, '[1,2]' -> [1, 2], 'none' -> None, else the string."""
  low = text.strip().lower()
  if low in ("true", "false"):
    return low == "true"
  if low in ("none", "null"):
    return None
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _coerce(value: str, current: Any, name: str) -> Any:
  """Converts the string `value` to the type of the field's `current` value."""
  if isinstance(current, bool):
    low = value.strip().lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise ConfigError(f"config key '{name}' is a bool; got {value!r} (use true/false)")
  if isinstance(current, int):
    try:
      return int(value)
    except ValueError:
      raise ConfigError(f"config key '{name}' is an int; got {value!r}") from None
  if isinstance(current, float):
    try:
      return float(value)
    except ValueError:
      raise ConfigError(f"config key '{name}' is a float; got {value!r}") from None
  if isinstance(current, str):
    return value
  if isinstance(current, (list, tuple)):
    parsed = _parse_literal(value)
    if isinstance(parsed, (list, tuple)):
      return type(current)(parsed)
    if isinstance(parsed, str) and "," in parsed:
      return type(current)(_parse_literal(p) for p in parsed.split(","))
    return type(current)([parsed])
  if isinstance(current, ConfigDict):
    raise ConfigError(f"config key '{name}' is a group; set one of its keys, e.g. "
                      f"--config.{name}.{next(iter(current.keys()), 'key')}=...")
  return _parse_literal(value)


def parse_arg(arg: str | None, **defaults: Any) -> ConfigDict:
  """Parses `"k=v,k2=v2"` (the part after `:` in `file.py:arg`) into a ConfigDict.

  Keys must be among `defaults`; values take the type of the default. A bare word `tiny`
  is shorthand for `tiny=True` when `tiny` is a bool default.
  """
  out = ConfigDict(dict(defaults))
  if not arg:
    return out
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"unknown config argument '{key}'; {nearest_key(key, defaults)}")
    if not sep:
      if isinstance(defaults[key], bool):
        value = "true"
      else:
        raise ConfigError(f"config argument '{key}' needs a value: {key}=...")
    out[key] = _coerce(value, defaults[key], key)
  return out


def _split_path_arg(spec: str) -> tuple[str, str | None]:
  idx = spec.find(".py:")
  if idx >= 0:
    return spec[: idx + 3], spec[idx + 4:]
  return spec, None


def load_config_file(spec: str) -> ConfigDict:
  """Loads `configs/x.py[:arg]` by calling its `get_config(arg)`."""
  path, arg = _split_path_arg(spec)
  if not os.path.isfile(path):
    raise ConfigError(f"config file not found: {path}")
  name = "qgjax_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} has no get_config(arg) function")
  params = inspect.signature(module.get_config).parameters
  config = module.get_config(arg) if params else module.get_config()
  if arg and not params:
    raise ConfigError(f"{path}: get_config() takes no argument but '{arg}' was given")
  if not isinstance(config, ConfigDict):
    config = ConfigDict(config)
  return config


def _stage_set_override(config: ConfigDict, group: ConfigDict, parts: list[str], value: str, dotted: str) -> None:
  """`<stage>.set.<key>=value` on a pipeline config: the key is checked against (and its value
  coerced to the type in) the stage's own config file, then set, though `set` did not list it."""
  path, arg = _split_path_arg(str(group.config))
  if not os.path.isabs(path) and not os.path.isfile(path) and "configs_dir" in config:
    path = os.path.join(config.configs_dir, path)
  stage = load_config_file(path + (":" + arg if arg else ""))
  try:
    apply_override(stage, ".".join(parts), value)
  except ConfigError as e:
    raise ConfigError(f"{dotted}: {e} (in {os.path.basename(path)})") from None
  src, node = stage, group.set
  for part in parts[:-1]:
    src = src[part]
    if part not in node or not isinstance(node[part], ConfigDict):
      with node.unlocked() if node.is_locked else _nullcontext():
        node[part] = ConfigDict()
    node = node[part]
  with node.unlocked() if node.is_locked else _nullcontext():
    node[parts[-1]] = src[parts[-1]]


def apply_override(config: ConfigDict, dotted: str, value: str) -> None:
  """Sets `config.<dotted> = value`, coerced to the existing field's type.

  On a pipeline config, `<stage>.set.<key>` may name any key of that stage's config file."""
  parts = dotted.split(".")
  node = config
  for i, part in enumerate(parts):
    here = ".".join(parts[: i + 1])
    if (part == "set" and i < len(parts) - 1 and isinstance(node, ConfigDict) and "config" in node
        and isinstance(node.get("set"), ConfigDict) and not _has_path(node.set, parts[i + 1:])):
      _stage_set_override(config, node, parts[i + 1:], value, dotted)
      return
    if not isinstance(node, ConfigDict) or part not in node:
      valid = node.keys() if isinstance(node, ConfigDict) else []
      raise ConfigError(f"unknown config key '{here}'; {nearest_key(part, valid)}")
    if i < len(parts) - 1:
      node = node[part]
  with node.unlocked() if node.is_locked else _nullcontext():
    node[parts[-1]] = _coerce(value, node[parts[-1]], dotted)


def _has_path(node: Any, parts: list[str]) -> bool:
  for part in parts:
    if not isinstance(node, ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


class _nullcontext:

  def __enter__(self):
    return None

  def __exit__(self, *exc):
    return False


def build_config(spec: str, overrides: Iterable[tuple[str, str]] = ()) -> ConfigDict:
  """Config file + overrides -> ConfigDict."""
  config = load_config_file(spec)
  for dotted, value in overrides:
    apply_override(config, dotted, value)
  from qgjax.config_checks import check_values
  check_values(config)  # bad values stop here, one line naming the key
  return config


def require(config: ConfigDict, *keys: str) -> None:
  """Raises ConfigError naming the first of `keys` (dotted) that is missing or None."""
  for dotted in keys:
    node = config
    for part in dotted.split("."):
      if not isinstance(node, ConfigDict) or part not in node:
        raise ConfigError(f"config needs '{dotted}' for this stage")
      node = node[part]
    if node is None or node == "":
      raise ConfigError(f"config key '{dotted}' must be set for this stage")
