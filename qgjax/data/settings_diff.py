"""Which settings changed between two (nested) settings dicts, as short `a.b: old -> new` lines.

  changed_settings({"model": {"dtype": "float32", "name": "m"}}, {"model": {"dtype": "bfloat16", "name": "m"}})
  -> ["model.dtype: 'float32' -> 'bfloat16'"]

A refused resume names the changed leaves only, not the whole nested settings.
"""

from __future__ import annotations

from typing import Any

_MISSING = object()


def _flatten(tree: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
  if isinstance(tree, dict) and tree:
    for k, v in tree.items():
      _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
  else:
    out[prefix] = tree
  return out


def _short(value: Any, limit: int = 60) -> str:
  if value is _MISSING:
    return "(unset)"
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def changed_settings(old: Any, new: Any, *, limit: int = 6) -> list[str]:
  """`key: old -> new` for each leaf that differs (dotted keys, sorted; at most `limit` plus a count)."""
  a, b = _flatten(old or {}, "", {}), _flatten(new or {}, "", {})
  keys = sorted(k for k in set(a) | set(b) if a.get(k, _MISSING) != b.get(k, _MISSING))
  lines = [f"{k}: {_short(a.get(k, _MISSING))} -> {_short(b.get(k, _MISSING))}" for k in keys[:limit]]
  if len(keys) > limit:
    lines.append(f"and {len(keys) - limit} more")
  return lines


def relocated(value: Any, old: str, new: str) -> Any:
  """`value` (nested dicts / lists) with every string path under `old` rewritten under `new`."""
  if isinstance(value, dict):
    return {k: relocated(v, old, new) for k, v in value.items()}
  if isinstance(value, list):
    return [relocated(v, old, new) for v in value]
  if isinstance(value, str) and (value == old or value.startswith(old + "/")):
    return new + value[len(old):]
  return value


def moved_root(old_dir: str, new_dir: str) -> tuple[str, str]:
  """(old root, new root): what a directory's path lost and gained in a move, its common trailing
  components kept: ("/a/run/align/checkpoints", "/b/copy/align/checkpoints") -> ("/a/run", "/b/copy")."""
  old_parts, new_parts = old_dir.rstrip("/").split("/"), new_dir.rstrip("/").split("/")
  same = 0
  while same < min(len(old_parts), len(new_parts)) - 1 and old_parts[-1 - same] == new_parts[-1 - same]:
    same += 1
  return "/".join(old_parts[:len(old_parts) - same]), "/".join(new_parts[:len(new_parts) - same])
