r"""Running a recipe's stage list with the pipeline's caching, some stages in their own process.

  configs, status, results, fps = run_stages(config, stages, isolated={"generate_test"})

Each stage is cached exactly as in `qgjax pipeline` (qgjax.jobs.pipeline.run_stage: STAGE_DONE.json
+ config fingerprint). A stage named in `isolated` runs `qgjax.jobs.<job>.run` in a fresh Python
process (qgjax.jobs.stage_process) so that its wall time and peak resident memory are its own:
the marker's result then carries `cost` = {"seconds": wall s, "peak_rss_mb": MiB (the child's own
VmHWM, qgjax.jobs.stage_process.peak_rss_mb)}. Recipes: `config.recipe` names one of RECIPES.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

from qgjax.errors import ConfigError, QgjaxError
from qgjax.jobs.pipeline_stages import Stage

RECIPES = {"aqe": "qgjax.jobs.recipe_aqe", "readqg": "qgjax.jobs.recipe_readqg"}


def run_recipe(config) -> dict:
  """`qgjax pipeline` with config.recipe != "dpo_qg": the named recipe module's run(config)."""
  name = config.get("recipe", "dpo_qg")
  if name not in RECIPES:
    raise ConfigError(f"unknown config.recipe {name!r}; recipes: dpo_qg, {', '.join(sorted(RECIPES))}")
  return importlib.import_module(RECIPES[name]).run(config)


def _say(msg: str) -> None:
  print(f"qgjax pipeline: {msg}", file=sys.stderr, flush=True)


def run_in_process(job: str, config) -> dict:
  """qgjax.jobs.<job>.run(config) in a child Python -> its result + cost {seconds, peak_rss_mb}."""
  with tempfile.TemporaryDirectory(prefix="qgjax-stage-") as tmp:
    cfg_path, out_path = os.path.join(tmp, "config.json"), os.path.join(tmp, "result.json")
    with open(cfg_path, "w") as f:
      f.write(config.to_json())
    start = time.perf_counter()
    # the child's stdout goes to our stderr: our stdout is the CLI's result
    proc = subprocess.run([sys.executable, "-m", "qgjax.jobs.stage_process", job, cfg_path, out_path],
                          stdout=sys.stderr.fileno())
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
      raise QgjaxError(f"qgjax {job} (in its own process) failed with exit code {proc.returncode}; "
                       "its error is printed above")
    with open(out_path) as f:
      result = json.load(f)
  result["cost"] = {"seconds": round(seconds, 2), "peak_rss_mb": result.pop("peak_rss_mb")}
  return result


def _in_own_process(stage: Stage, config) -> tuple[dict, float, str]:
  """pipeline.run_stage's `execute` for a stage in a child process (single-process runs only)."""
  result = run_in_process(stage.job, config)
  return result, result["cost"]["seconds"], f", peak RSS {result['cost']['peak_rss_mb']:.0f} MiB (own process)"


def run_stages(config, stages: tuple[Stage, ...], isolated: frozenset[str] | set[str] = frozenset()):
  """pipeline.run_stages with the stages named in `isolated` in their own process (single-process
  runs; with several processes every stage runs in-process, without cost figures)
  -> (configs [(stage, cfg)], status, results, fingerprints)."""
  import jax

  from qgjax.jobs.pipeline import _run_here
  from qgjax.jobs.pipeline import run_stages as run_cached

  own = jax.process_count() == 1
  pick = lambda stage: _in_own_process if own and stage.name in isolated else _run_here
  _, configs, status, results, fps = run_cached(config, stages, pick)
  return configs, status, results, fps


def summary(workdir, status: dict, report: dict) -> dict:
  """The CLI result of a recipe run."""
  return {"workdir": str(workdir), "stages": status, "ran": [s for s, v in status.items() if v == "ran"],
          "skipped": [s for s, v in status.items() if v == "skipped"], "report": report["paths"],
          "systems": {s["key"]: s["metrics"] for s in report["report"].get("systems", [])}}
