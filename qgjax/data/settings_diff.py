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
