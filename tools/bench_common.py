"""What every benchmark in tools/ records beside its figures: the machine, the load, the result file.

  from bench_common import load_avg, machine, write_result
"""

from __future__ import annotations

import json
import os
import platform


def machine() -> dict:
  """The host: platform, python, logical CPUs, CPU model and memory in GiB (where /proc tells)."""
  info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
          "processor": platform.processor() or platform.machine()}
  try:
    with open("/proc/cpuinfo") as f:
      info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    with open("/proc/meminfo") as f:
      info["mem_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
  except (OSError, StopIteration):
    pass
  return info


def load_avg() -> list[float]:
  """The 1/5/15-minute load averages, rounded ([] where the OS has none)."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


def write_result(path: str, result: dict, summary: dict) -> None:
  """Writes `result` as JSON to `path` (folders made) and prints `summary`, the headline figures."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(summary, indent=1))
