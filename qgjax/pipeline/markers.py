"""A finished pipeline stage: `<stage dir>/STAGE_DONE.json` with its result and config fingerprint.

The fingerprint hashes the stage's full ConfigDict and the fingerprints of the stages it reads,
so a finished stage is reused only for the very settings and inputs that made it. Different
settings for a finished stage are a QgjaxError naming the stage and the changed keys: nothing
already computed is silently reused or overwritten. Keys that a newer config file adds (absent
from the marker) do not count as a change, nor do cache locations (`*.cache_dir`: where an
index or embeddings are kept changes no result) or `*.share_prompt_prefix` (a cost, not a
result), nor does the workdir itself: a workdir moved or copied elsewhere (or a stage directory
linked into another workdir, e.g. to share a generation pool between two runs) keeps its finished
stages, since paths under the workdir the marker was written in are compared as paths under the
current one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import time
from typing import Any

from qgjax.data import storage
from qgjax.data.settings_diff import relocated
from qgjax.errors import QgjaxError

MARKER = "STAGE_DONE.json"
log = logging.getLogger(__name__)


def config_dict(config) -> dict:
  """A ConfigDict as plain JSON data (tuples as lists), the form that is hashed and stored."""
  return json.loads(config.to_json(sort_keys=True))


def fingerprint(config: dict, needs: dict[str, str], workdir: str | None = None) -> str:
  """A stage's identity: its config (paths under `workdir` written relative to it, so that a workdir
  moved or carried to another machine keeps its fingerprints, even for a stage that runs again there)
  and the fingerprints of the stages it reads."""
  if workdir is not None:
    config = relocated(config, str(workdir).rstrip("/"), "<workdir>")
  blob = json.dumps({"config": config, "needs": needs}, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_marker(stage_dir: pathlib.Path) -> dict | None:
  """The stage's marker, or None (`stage_dir`: a pathlib.Path or, for a gs:// workdir, an epath.Path)."""
  path = stage_dir / MARKER
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise QgjaxError(f"{path}: unreadable stage marker ({e}); delete it to run the stage again") from None


_ABSENT = object()
# leaf key names whose value never changes a stage's output: where an index or embeddings are kept,
# and whether the prompt's common start is computed once per batch (the same queries / losses)
_RESULT_NEUTRAL = ("cache_dir", "share_prompt_prefix")


def _changed_keys(old: Any, new: Any, prefix: str = "") -> tuple[list[str], list[str]]:
  """(keys whose values differ or that were removed, keys that are new in `new`)."""
  if isinstance(old, dict) and isinstance(new, dict):
    changed, added = [], []
    for key in sorted(set(old) | set(new)):
      c, a = _changed_keys(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{prefix}{key}.")
      changed += c
      added += a
    return changed, added
  name = prefix.rstrip(".")
  if old is _ABSENT:
    return [], [name]
  return ([] if old == new else [name]), []


def _marker_workdir(marker: dict) -> str | None:
  """The workdir a marker was written in: its `workdir` field, or (markers written before it existed)
  the parent of the stage's own directory, the config value that ends in /<stage>."""
  if marker.get("workdir"):
    return str(marker["workdir"])
  tail = "/" + str(marker.get("stage", ""))
  found: list[str] = []

  def walk(value):
    if isinstance(value, dict):
      for v in value.values():
        walk(v)
    elif isinstance(value, str) and value.endswith(tail) and len(value) > len(tail):
      found.append(value[: -len(tail)])
  walk(marker.get("config", {}))
  return found[0] if found and len(set(found)) == 1 else None


def _lookup(tree: Any, dotted: str) -> Any:
  for part in dotted.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return _ABSENT
    tree = tree[part]
  return tree


def check_marker(stage: str, stage_dir: pathlib.Path, later: list[str], marker: dict, config: dict,
                 needs: dict[str, str], fp: str, defaults: dict | None = None) -> str:
  """The fingerprint the finished stage in `stage_dir` stands for; QgjaxError if it was made with other settings.

  Keys that only exist in the current config (a newer config file added them) are taken as
  compatible, with a note: the stage keeps the fingerprint it was made with; with `defaults` (the
  stage's config file as it is, without the pipeline's values) only where the key keeps its default,
  since the stage never ran with another value. So is a stage whose workdir moved: its paths under the
  old workdir are compared as paths under `stage_dir`'s parent.
  """
  if marker.get("fingerprint") == fp:
    return fp
  made_in, here = _marker_workdir(marker), str(stage_dir.parent)
  moved = made_in is not None and made_in != here
  old_config = relocated(marker.get("config", {}), made_in, here) if moved else marker.get("config", {})
  changed, added = _changed_keys(old_config, config)
  if defaults is not None:
    set_apart = [k for k in added if _lookup(defaults, k) != _lookup(config, k)]
    changed += [f"{k} (a key newer than the stage, set to a value other than its default)" for k in set_apart]
    added = [k for k in added if k not in set_apart]
  neutral = [k for k in changed if k.rsplit(".", 1)[-1] in _RESULT_NEUTRAL]
  changed = [k for k in changed if k not in neutral]
  changed += [f"input from stage '{n}'" for n in needs if marker.get("needs", {}).get(n) != needs[n]]
  if not changed:
    why = ([f"made before these config keys existed: {', '.join(added)}"] if added else []) + \
          ([f"only cache locations differ: {', '.join(neutral)}"] if neutral else []) + \
          ([f"made in workdir {made_in}"] if moved else []) + \
          ([] if added or neutral or moved else ["its fingerprint is of an older form"])
    log.info("note: stage '%s' taken as compatible (%s)", stage, "; ".join(why))
    return marker["fingerprint"]
  shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
  raise QgjaxError(
      f"pipeline stage '{stage}' already finished in {stage_dir} with other settings "
      f"({shown} changed); restore them, use another --config.workdir, or delete {stage_dir}"
      + (f" and the stages after it ({', '.join(later)})" if later else "") + " to run it again")


def write_marker(stage: str, stage_dir: pathlib.Path, job: str, config: dict, needs: dict[str, str], fp: str,
                 result: dict | None, seconds: float, timing: dict | None = None) -> None:
  """`seconds`: the attempt that finished; `timing` ({attempts, seconds_all_attempts}, qgjax.pipeline.clock):
  every attempt's, killed ones included."""
  marker = {"stage": stage, "job": job, "fingerprint": fp, "needs": needs, "seconds": round(seconds, 2),
            **(timing or {}),
            "workdir": str(stage_dir.parent),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "result": result or {}, "config": config}
  stage_dir.mkdir(parents=True, exist_ok=True)
  storage.write_bytes_atomic(stage_dir / MARKER, (json.dumps(marker, indent=1, default=str) + "\n").encode())
