"""Child side of qgjax.jobs.recipe_runner.run_in_process: one job on a JSON-serialised ConfigDict.

  python -m qgjax.jobs.stage_process <job> <config.json> <result.json>
"""

from __future__ import annotations

import importlib
import json
import os
import sys


def peak_rss_mb() -> float:
  """This process's peak resident set in MiB: VmHWM of /proc/self/status (Linux; it starts afresh at
  exec, unlike ru_maxrss, which keeps the forking parent's), else ru_maxrss."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str]) -> int:
  import ml_collections

  from qgjax.errors import QgjaxError

  job, cfg_path, out_path = argv
  with open(cfg_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  from qgjax.parallel.compile_cache import enable_compilation_cache
  enable_compilation_cache()
  try:
    result = importlib.import_module(f"qgjax.jobs.{job}").run(config) or {}
  except QgjaxError as e:
    print(f"qgjax: error: {e}", file=sys.stderr)
    return 2
  result = {**result, "peak_rss_mb": round(peak_rss_mb(), 1)}
  tmp = out_path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(result, f, default=str)
  os.replace(tmp, out_path)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
