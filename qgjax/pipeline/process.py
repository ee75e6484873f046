"""A stage's job in a fresh Python process, so that its wall time and peak memory are its own.

  result = run_in_process("qgjax.jobs.generate", config)   # + result["cost"] = {seconds, peak_rss_mb}

Child side: `python -m qgjax.pipeline.process <job module> <config.json> <result.json>`.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

from qgjax.errors import QgjaxError
from qgjax.log import LEVEL_ENV, LOGGER, resolve_level, setup_logging

log = logging.getLogger(__name__)


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


def run_in_process(job: str, config) -> dict:
  """<job>.run(config) in a child Python -> its result + cost {seconds, peak_rss_mb}."""
  with tempfile.TemporaryDirectory(prefix="qgjax-stage-") as tmp:
    cfg_path, out_path = os.path.join(tmp, "config.json"), os.path.join(tmp, "result.json")
    with open(cfg_path, "w") as f:
      f.write(config.to_json())
    start = time.perf_counter()
    # the child's stdout goes to our stderr: our stdout is the CLI's result; it logs at our level
    env = dict(os.environ, **{LEVEL_ENV: str(logging.getLogger(LOGGER).getEffectiveLevel())})
    proc = subprocess.run([sys.executable, "-m", "qgjax.pipeline.process", job, cfg_path, out_path],
                          stdout=sys.stderr.fileno(), env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
      raise QgjaxError(f"{job} (in its own process) failed with exit code {proc.returncode}; "
                       "its error is printed above")
    with open(out_path) as f:
      result = json.load(f)
  result["cost"] = {"seconds": round(seconds, 2), "peak_rss_mb": result.pop("peak_rss_mb")}
  return result


def main(argv: list[str]) -> int:
  import ml_collections

  job, cfg_path, out_path = argv
  with open(cfg_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  from qgjax.parallel.compile_cache import enable_compilation_cache
  enable_compilation_cache()
  setup_logging(resolve_level())
  try:
    result = importlib.import_module(job).run(config) or {}
  except QgjaxError as e:
    logging.getLogger(LOGGER).error("%s", e)
    return 2
  result = {**result, "peak_rss_mb": round(peak_rss_mb(), 1)}
  tmp = out_path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(result, f, default=str)
  os.replace(tmp, out_path)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
