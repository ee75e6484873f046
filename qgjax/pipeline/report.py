"""A recipe's report: its systems' metrics side by side, the generators' rewards, info and tables.

  write_recipe_report(recipe, config, workdir, results, reward_name) -> {"paths": {...}, "report": {...}}

Rows come from each system's evaluate stage (<workdir>/<stage>/metrics.json), the reward
histograms from `recipe.rewards(workdir)`; written to <workdir>/report/report.{md,json,png}.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from qgjax.data.records import iter_records


def scored_rewards(scored_dir: pathlib.Path) -> list[float]:
  """The `reward` of every record of a score stage's sharded output (all processes' parts)."""
  return [float(r["reward"]) for _, _, r in iter_records(scored_dir)]


def stage_metrics(workdir: pathlib.Path, stage: str) -> dict:
  """An evaluate stage's metrics.json."""
  return json.loads((workdir / stage / "metrics.json").read_text())


def stage_times(workdir: pathlib.Path, stages: list[str]) -> dict:
  """A report table: each stage's wall seconds as its STAGE_DONE.json recorded them, over every attempt
  (a run killed in the stage and started again counts both; a skipped stage keeps the time it took when
  it ran), the number of attempts, and the sums."""
  from qgjax.pipeline.markers import read_marker

  rows, total = [], 0.0
  for name in stages:
    marker = read_marker(workdir / name) or {}
    seconds = float(marker.get("seconds_all_attempts", marker.get("seconds", 0.0)))
    total += seconds
    rows.append([name, f"{seconds:.1f}", str(marker.get("attempts", 1 if marker else "-")),
                 marker.get("finished_at", "-")])
  rows.append(["total", f"{total:.1f}", "", ""])
  return {"title": "Stage times", "columns": ["stage", "seconds", "attempts", "finished at"], "rows": rows,
          "note": "wall time each stage took, over all attempts where a run was killed in it and resumed "
                  "(STAGE_DONE.json; a killed attempt counts to within 30 s)"}


def write_recipe_report(recipe, config, workdir: pathlib.Path, results: dict[str, dict], reward_name: str
                        ) -> dict[str, Any]:
  from qgjax.evaluation.report import build_report, write_report

  args = recipe.label_args(config, results)
  systems = [s for s in recipe.systems if s.stage in results]   # a stage `when` left out has no row
  metrics = {s.stage: stage_metrics(workdir, s.stage) for s in systems}
  rows = [{"key": s.key, "label": s.label.format(**args), "metrics": metrics[s.stage]["systems"][s.system]}
          for s in systems]
  measures = metrics[systems[0].stage]["measures"]
  report = build_report(rows, measures, recipe.rewards(workdir), reward_name=reward_name,
                        info=recipe.info(config, results),
                        tables=list(recipe.tables(config, workdir, results, metrics)) + [stage_times(workdir, list(results))],
                        title=recipe.title)
  return {"paths": write_report(workdir / "report", report, bins=int(config.report.bins)), "report": report}
