r"""Running a recipe: its stages in order, each cached on disk and resumable, then its report.

  summary = run_recipe(recipe, config)      # what `qgjax pipeline` prints

Stage X runs `<stage.job>.run(config)` with the config qgjax.pipeline.wiring builds, in
<workdir>/X/, and then writes <workdir>/X/STAGE_DONE.json (qgjax.pipeline.markers). A stage with
that marker and a whole output is skipped; a marker made with other settings is an error naming
the stage and the changed keys. A pipeline killed at any moment and started again with the same
command re-enters the unfinished stage, which resumes on its own (sharded outputs, orbax
checkpoints). A finished stage whose model was deleted (an `intermediate` stage: its marker is
there, its export is not) runs again only when a stage still to run reads it, like make's
intermediate files: a workdir can travel without its checkpoints once their readers are done. A
stage named in `recipe.isolated` runs in a fresh process (single-process runs only) so that its wall
time and peak memory are its own: its result then carries `cost`.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import pathlib
import time
from typing import Any, Callable

from qgjax.config import require
from qgjax.data import storage
from qgjax.errors import ConfigError, QgjaxError
from qgjax.parallel.distributed import barrier, is_main_process
from qgjax.pipeline import markers
from qgjax.pipeline.clock import StageClock
from qgjax.pipeline.process import run_in_process
from qgjax.pipeline.stage import Stage, depends_on
from qgjax.pipeline.wiring import default_config, stage_config

log = logging.getLogger(__name__)
Execute = Callable[[Stage, Any], tuple[dict, float, str]]   # (stage, config) -> (result, seconds, log note)


@dataclasses.dataclass(frozen=True)
class System:
  """A report row: `label` (str.format'ed with the recipe's label_args), read from
  <workdir>/<stage>/metrics.json systems[<system>]."""
  key: str
  label: str
  stage: str
  system: str


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A method as data: its stages with their wiring, its report, and the keys it needs."""
  name: str
  title: str
  stages: tuple[Stage, ...]
  systems: tuple[System, ...]
  required: tuple[str, ...]                                   # pipeline config keys that must be set
  reward_name: Callable[[dict], str]                          # stage configs by name -> reward label
  rewards: Callable[[pathlib.Path], dict[str, list[float]]]   # workdir -> reward histograms
  info: Callable[[Any, dict], dict]                           # (config, results) -> report info
  tables: Callable[[Any, pathlib.Path, dict, dict], list] = lambda config, workdir, results, metrics: []
  label_args: Callable[[Any, dict], dict] = lambda config, results: {}
  check: Callable[[Any, dict], None] = lambda config, stage_configs: None
  isolated: frozenset[str] = frozenset()


def run_here(stage: Stage, config) -> tuple[dict, float, str]:
  """The stage's job in this process -> (result, seconds, note for the log)."""
  start = time.perf_counter()
  result = importlib.import_module(stage.job).run(config) or {}
  barrier(f"qgjax pipeline: {stage.name}")  # every host's part is written before the check
  return result, time.perf_counter() - start, ""


def run_isolated(stage: Stage, config) -> tuple[dict, float, str]:
  """The stage's job in a child process, with its cost."""
  result = run_in_process(stage.job, config)
  return result, result["cost"]["seconds"], f", peak RSS {result['cost']['peak_rss_mb']:.0f} MiB (own process)"


def pending_stages(workdir: pathlib.Path, stages: list[Stage]) -> set[str]:
  """The names of the stages (in run order) that will run: those without a marker or without a whole
  output, except an intermediate stage (a model) that no pending stage reads."""
  pending: set[str] = set()
  for i in reversed(range(len(stages))):
    stage, stage_dir = stages[i], workdir / stages[i].name
    marked = markers.read_marker(stage_dir) is not None
    if marked and stage.complete(stage_dir):
      continue
    read_later = any(stage.name in s.needs and s.name in pending for s in stages[i + 1:])
    if not marked or not stage.intermediate or read_later:
      pending.add(stage.name)
  return pending


def run_stage(stage: Stage, config, stage_dir: pathlib.Path, needs: dict[str, str], later: list[str],
              position: str, execute: Execute = run_here, defaults: dict | None = None,
              output_needed: bool = True) -> tuple[str, dict, str]:
  """Runs or skips one stage -> ("ran" | "skipped", its result, its fingerprint). `defaults`: the
  stage's config file alone (as a dict), which tells a key newer than a finished stage at its default
  from one the pipeline sets (markers.check_marker). `output_needed=False` (pending_stages): a finished
  intermediate stage whose output is gone is skipped, since nothing still to run reads it."""
  as_dict = markers.config_dict(config)
  fp = markers.fingerprint(as_dict, needs, workdir=str(stage_dir.parent))
  marker = markers.read_marker(stage_dir)
  if marker is not None:
    made_with = markers.check_marker(stage.name, stage_dir, later, marker, as_dict, needs, fp, defaults)
    if stage.complete(stage_dir):
      log.info("%s %s: done, skipped (%s)", position, stage.name, stage_dir / markers.MARKER)
      return "skipped", marker.get("result", {}), made_with
    if stage.intermediate and not output_needed:
      log.info("%s %s: done, its model in %s was removed and no stage still to run reads it: skipped",
               position, stage.name, stage_dir)
      return "skipped", marker.get("result", {}), made_with
    log.info("%s %s: marked done but its output in %s is not whole; running it again", position, stage.name,
             stage_dir)
  log.info("%s %s: running %s in %s", position, stage.name, stage.job, stage_dir)
  with StageClock(stage_dir, enabled=is_main_process()) as clock:   # counts killed attempts too
    result, seconds, note = execute(stage, config)
  if not stage.complete(stage_dir):
    raise QgjaxError(f"pipeline stage '{stage.name}' finished but left no whole output in {stage_dir}")
  timing = clock.summary()
  if is_main_process():
    markers.write_marker(stage.name, stage_dir, stage.job, as_dict, needs, fp, result, seconds, timing=timing)
    clock.remove()
  earlier = (f" ({timing['seconds_all_attempts']:.1f} s over {timing['attempts']} attempts)"
             if timing["attempts"] > 1 else "")
  log.info("%s %s: finished in %.1f s%s%s", position, stage.name, seconds, earlier, note)
  return "ran", result, fp


def stage_configs(config, stages: tuple[Stage, ...]) -> tuple[pathlib.Path, list[tuple[Stage, Any]]]:
  """(workdir, [(stage, its ConfigDict)]) of the stages `config` runs (`stage.when`): every stage's
  config built before any runs, so a config error stops the pipeline before it starts."""
  workdir = storage.as_path(storage.absolute(config.workdir))   # a gs:// URL stays one (an epath.Path)
  workdir = workdir if storage.is_remote(workdir) else workdir.resolve()
  at = lambda name: str(workdir / name)
  return workdir, [(stage, stage_config(config, stage, at)) for stage in stages if stage.when(config)]


def run_stages(workdir: pathlib.Path, configs: list[tuple[Stage, Any]], isolated: frozenset[str] = frozenset(),
               defaults: dict[str, dict] | None = None) -> tuple[dict[str, str], dict[str, dict]]:
  """Runs (or skips) the stages in order, stage X in <workdir>/X -> (status, results) by stage name.

  Stages in `isolated` run in their own process when this is the only process (with several
  processes every stage runs in-process, without cost figures)."""
  import jax

  own = jax.process_count() == 1
  by_name = {s.name: s for s, _ in configs}
  pending = pending_stages(workdir, [s for s, _ in configs])
  status, results, fps = {}, {}, {}
  for i, (stage, cfg) in enumerate(configs):
    needs = {n: fps[n] for n in stage.needs if n in by_name}   # a stage `when` left out is not read
    later = [s.name for s, _ in configs[i + 1:] if depends_on(s, stage.name, by_name)]
    execute = run_isolated if own and stage.name in isolated else run_here
    status[stage.name], results[stage.name], fps[stage.name] = run_stage(
        stage, cfg, workdir / stage.name, needs, later, f"[{i + 1}/{len(configs)}]", execute=execute,
        defaults=(defaults or {}).get(stage.name), output_needed=stage.name in pending)
  return status, results


def run_recipe(recipe: Recipe, config) -> dict:
  """The whole recipe under config.workdir -> the CLI summary (stages ran / skipped, report paths,
  each system's metrics, reward statistics)."""
  from qgjax.pipeline.report import write_recipe_report

  require(config, "workdir", "configs_dir", *recipe.required)
  workdir, configs = stage_configs(config, recipe.stages)
  by_name = {s.name: c for s, c in configs}
  recipe.check(config, by_name)
  until = str(config.get("until", "") or "")
  if until:
    names = [s.name for s, _ in configs]
    if until not in names:
      raise ConfigError(f"config.until={until!r} is not a stage of this run; its stages: {', '.join(names)}")
    configs = configs[: names.index(until) + 1]
  defaults = {s.name: markers.config_dict(default_config(config, s)) for s, _ in configs}
  status, results = run_stages(workdir, configs, recipe.isolated, defaults)
  report = {"paths": {}, "report": {}}
  if until:
    log.info("stopped after stage %s (config.until); run again without it to go on", until)
  elif is_main_process():
    report = write_recipe_report(recipe, config, workdir, results, recipe.reward_name(by_name))
    log.info("report: %s", report["paths"].get("markdown", ""))
  return {"workdir": str(workdir), "stages": status, "ran": [s for s, v in status.items() if v == "ran"],
          "skipped": [s for s, v in status.items() if v == "skipped"], "report": report["paths"],
          "systems": {s["key"]: s["metrics"] for s in report["report"].get("systems", [])},
          "reward": report["report"].get("reward", {}).get("stats", {}), **({"stopped_after": until} if until else {})}
