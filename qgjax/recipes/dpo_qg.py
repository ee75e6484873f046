r"""`qgjax pipeline`: the whole recipe, each stage cached on disk and resumable.

  qgjax pipeline --config configs/pipeline.py:tiny
  qgjax pipeline --config configs/pipeline.py --config.workdir=runs/pipeline/nfcorpus

corpus -> generate (n/doc) -> score -> pairs -> align (DPO, `qgjax train`) -> generate 1 query/doc
with the base and with the aligned generator -> score both -> mine both -> train a MiniLM
retriever on each -> evaluate BM25, base MiniLM and both trained retrievers on the `split`
queries + qrels (training uses the corpus only) -> <workdir>/report/report.{md,json,png}.

Stage X runs `qgjax.jobs.<job>.run` with its own config (see qgjax.jobs.pipeline_stages) in
<workdir>/X/ and then writes <workdir>/X/STAGE_DONE.json. A stage with that marker and a whole
output is skipped; a marker made with other settings is an error naming the stage. A pipeline
killed at any moment and started again with the same command re-enters the unfinished stage,
which resumes on its own (sharded outputs, orbax checkpoints).
"""

from __future__ import annotations

import importlib
import pathlib
import sys
import time
from typing import Any, Callable

from qgjax.config import require
from qgjax.data.sharded_writer import iter_sharded
from qgjax.errors import QgjaxError
from qgjax.jobs import pipeline_cache as cache
from qgjax.jobs.pipeline_stages import STAGES, Stage, stage_config

# (report row key, label, evaluate stage, system name in its metrics.json)
SYSTEMS = (("bm25", "BM25", "evaluate_bm25", "bm25"),
           ("base", "MiniLM (base)", "evaluate_base", "dense"),
           ("unaligned", "MiniLM + unaligned queries", "evaluate_unaligned", "dense"),
           ("aligned", "MiniLM + aligned queries", "evaluate_aligned", "dense"))


def _say(msg: str) -> None:
  print(f"qgjax pipeline: {msg}", file=sys.stderr, flush=True)


def _is_main() -> bool:
  import jax
  return jax.process_index() == 0


def _barrier(name: str) -> None:
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _run_here(stage: Stage, config) -> tuple[dict, float, str]:
  """The stage's job in this process -> (result, seconds, note for the log)."""
  start = time.perf_counter()
  result = importlib.import_module(f"qgjax.jobs.{stage.job}").run(config) or {}
  _barrier(f"qgjax pipeline: {stage.name}")  # every host's part is written before the check
  return result, time.perf_counter() - start, ""


def run_stage(stage: Stage, config, stage_dir: pathlib.Path, needs: dict[str, str], later: list[str],
              position: str, execute: Callable[[Stage, Any], tuple[dict, float, str]] = _run_here,
              ) -> tuple[str, dict, str]:
  """Runs or skips one stage -> ("ran" | "skipped", its result, its fingerprint).

  `execute(stage, config) -> (result, seconds, log note)` runs the job (default: in this process).
  """
  as_dict = cache.config_dict(config)
  fp = cache.fingerprint(as_dict, needs)
  marker = cache.read_marker(stage_dir)
  if marker is not None:
    made_with = cache.check_marker(stage.name, stage_dir, later, marker, as_dict, needs, fp)
    if stage.complete(stage_dir):
      _say(f"{position} {stage.name}: done, skipped ({stage_dir / cache.MARKER})")
      return "skipped", marker.get("result", {}), made_with
    _say(f"{position} {stage.name}: marked done but its output in {stage_dir} is not whole; running it again")
  _say(f"{position} {stage.name}: running qgjax {stage.job} in {stage_dir}")
  result, seconds, note = execute(stage, config)
  if not stage.complete(stage_dir):
    raise QgjaxError(f"pipeline stage '{stage.name}' finished but left no whole output in {stage_dir}")
  if _is_main():
    cache.write_marker(stage.name, stage_dir, stage.job, as_dict, needs, fp, result, seconds)
  _say(f"{position} {stage.name}: finished in {seconds:.1f} s{note}")
  return "ran", result, fp


def _rewards(scored_dir: pathlib.Path) -> list[float]:
  return [float(r["reward"]) for r in iter_sharded(scored_dir, require_complete=True)]


def _report(config, workdir: pathlib.Path, results: dict[str, dict], reward_name: str) -> dict:
  """Collects the evaluate stages' metrics and both generators' rewards into <workdir>/report."""
  import json

  from qgjax.evaluation.report import build_report, write_report

  rows, measures = [], None
  for key, label, stage, system in SYSTEMS:
    metrics = json.loads((workdir / stage / "metrics.json").read_text())
    measures = measures or metrics["measures"]
    rows.append({"key": key, "label": label, "metrics": metrics["systems"][system]})
  rewards = {"unaligned": _rewards(workdir / "score_unaligned" / "scored"),
             "aligned": _rewards(workdir / "score_aligned" / "scored")}
  final = results.get("align", {}).get("final", {})
  info = {"data_dir": config.data_dir or "the demo corpus (qgjax/data/demo)",
          "split (evaluation)": config.split, "generator": config.generator, "encoder": config.encoder,
          "queries generated (n/doc)": results.get("generate", {}).get("records"),
          "preference pairs": results.get("pairs", {}).get("pairs"),
          "DPO final loss": final.get("loss"), "DPO eval reward accuracy": final.get("eval/rewards/accuracy")}
  for which in ("unaligned", "aligned"):  # how much each trained MiniLM saw (a 1-step run barely moves)
    summary = workdir / f"retriever_{which}" / "summary.json"
    if summary.is_file():
      s = json.loads(summary.read_text())
      info[f"retriever ({which})"] = (f"{s.get('train_examples')} training tuples, {s.get('steps')} steps, "
                                      f"final loss {s.get('final', {}).get('loss', float('nan')):.4f}")
  report = build_report(rows, measures, rewards, reward_name=reward_name, info=info)
  return {"paths": write_report(workdir / "report", report, bins=int(config.report.bins)), "report": report}


def run_stages(config, stages: tuple[Stage, ...],
               execute_for: Callable[[Stage], Callable] = lambda stage: _run_here):
  """Runs (or skips) `stages` in order under config.workdir, stage X in <workdir>/X, each with
  `execute_for(stage)` -> (workdir, [(stage, cfg)], status, results, fingerprints)."""
  workdir = pathlib.Path(config.workdir).resolve()
  stage_dir = lambda name: str(workdir / name)
  configs = [(stage, stage_config(config, stage, stage_dir)) for stage in stages]  # config errors first
  status, results, fps = {}, {}, {}
  for i, (stage, stage_cfg) in enumerate(configs):
    needs = {n: fps[n] for n in stage.needs}
    later = [s.name for s, _ in configs[i + 1:] if _depends_on(s, stage.name, configs)]
    status[stage.name], results[stage.name], fps[stage.name] = run_stage(
        stage, stage_cfg, workdir / stage.name, needs, later, f"[{i + 1}/{len(configs)}]",
        execute=execute_for(stage))
  return workdir, configs, status, results, fps


def run(config) -> dict:
  if config.get("recipe", "dpo_qg") != "dpo_qg":  # AQE, ReadQG: qgjax.jobs.recipe_runner.RECIPES
    from qgjax.jobs.recipe_runner import run_recipe
    return run_recipe(config)
  require(config, "workdir", "generator", "encoder", "split", "configs_dir")
  workdir, configs, status, results, _ = run_stages(config, STAGES)
  report = (_report(config, workdir, results, _stage(configs, "score_aligned").reward) if _is_main()
            else {"paths": {}, "report": {}})
  _say(f"report: {report['paths'].get('markdown', '')}")
  return {"workdir": str(workdir), "stages": status, "ran": [s for s, v in status.items() if v == "ran"],
          "skipped": [s for s, v in status.items() if v == "skipped"], "report": report["paths"],
          "systems": {s["key"]: s["metrics"] for s in report["report"].get("systems", [])},
          "reward": report["report"].get("reward", {}).get("stats", {})}


def _stage(configs, name: str):
  return next(cfg for stage, cfg in configs if stage.name == name)


def _depends_on(stage: Stage, name: str, configs) -> bool:
  """Whether `stage` reads, directly or through other stages, what stage `name` wrote."""
  by_name = {s.name: s for s, _ in configs}
  todo, seen = list(stage.needs), set()
  while todo:
    n = todo.pop()
    if n == name:
      return True
    if n not in seen:
      seen.add(n)
      todo += list(by_name[n].needs)
  return False
