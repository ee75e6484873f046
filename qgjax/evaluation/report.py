"""A side-by-side report of retrieval systems and of the generator's rewards before/after alignment.

  report = build_report(rows, measures, rewards={"unaligned": [...], "aligned": [...]}, reward_name="bm25_rank")
  write_report("runs/x/report", report)  # -> report.md, report.json, report.png

rows: [{"key": "bm25", "label": "BM25", "metrics": {"nDCG@10": 0.32, ...}}, ...] (one per system);
measures are ir_metrics names (RR@k is shown as MRR@k, R@k as Recall@k, Success@k as Top-k acc).
The PNG has two panels: histograms of the rewards (one per generator) and the metric table.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from qgjax.data import storage


def measure_label(measure: str) -> str:
  """'RR@100' -> 'MRR@100', 'R@100' -> 'Recall@100', 'Success@10' -> 'Top-10 acc', else unchanged."""
  m = re.fullmatch(r"(RR|R|Success)@(\d+)", measure)
  if not m:
    return measure
  return {"RR": f"MRR@{m[2]}", "R": f"Recall@{m[2]}", "Success": f"Top-{m[2]} acc"}[m[1]]


def reward_stats(values: Sequence[float]) -> dict[str, float | int | None]:
  v = np.asarray(values, np.float64)
  if not v.size:
    return {"count": 0, "mean": None, "median": None, "std": None, "min": None, "max": None}
  return {"count": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std()),
          "min": float(v.min()), "max": float(v.max())}


def build_report(rows: Sequence[Mapping[str, Any]], measures: Sequence[str], rewards: Mapping[str, Sequence[float]],
                 reward_name: str, info: Mapping[str, Any] | None = None,
                 tables: Sequence[Mapping[str, Any]] = (), title: str = "qgjax pipeline report") -> dict:
  """The report as JSON data: systems with their metrics, reward statistics and raw rewards.

  tables: extra markdown tables [{"title", "columns": [...], "rows": [[...], ...], "note"?}] (recipes'
  costs, query quality), rendered after the retrieval table.
  """
  return {
      "title": title, "tables": [dict(t) for t in tables],
      "measures": [{"name": m, "label": measure_label(m)} for m in measures],
      "systems": [{"key": r["key"], "label": r["label"],
                   "metrics": {m: r["metrics"].get(m) for m in measures}} for r in rows],
      "reward": {"name": reward_name, "stats": {k: reward_stats(v) for k, v in rewards.items()},
                 "values": {k: [float(x) for x in v] for k, v in rewards.items()}},
      "info": dict(info or {}),
  }


def _cell(value) -> str:
  return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _any_cell(value) -> str:
  return _cell(value) if isinstance(value, float) or value is None else str(value)


def markdown(report: Mapping[str, Any]) -> str:
  measures = report["measures"]
  lines = [f"# {report.get('title', 'qgjax pipeline report')}", ""]
  info = report.get("info", {})
  if info:
    lines += [f"- {k}: {v}" for k, v in info.items()] + [""]
  lines += ["## Retrieval", "", "| system | " + " | ".join(m["label"] for m in measures) + " |",
            "|---|" + "---:|" * len(measures)]
  for s in report["systems"]:
    lines.append(f"| {s['label']} | " + " | ".join(_cell(s["metrics"][m["name"]]) for m in measures) + " |")
  for t in report.get("tables", []):
    lines += ["", f"## {t['title']}", "", "| " + " | ".join(t["columns"]) + " |",
              "|---|" + "---:|" * (len(t["columns"]) - 1)]
    lines += ["| " + " | ".join(_any_cell(v) for v in row) + " |" for row in t["rows"]]
    if t.get("note"):
      lines += ["", t["note"]]
  r = report["reward"]
  lines += ["", f"## Generator reward `{r['name']}` (higher is better), one query per document", "",
            "| generator | queries | mean | median | std | min | max |", "|---|---:|---:|---:|---:|---:|---:|"]
  for name, st in r["stats"].items():
    lines.append(f"| {name} | {st['count']} | " + " | ".join(_cell(st[k]) for k in ("mean", "median", "std", "min",
                                                                                      "max")) + " |")
  lines += ["", "![rewards and metrics](report.png)", ""]
  return "\n".join(lines)


def plot(report: Mapping[str, Any], path, bins: int = 30) -> None:
  """Reward histograms (left) and the metric table (right) into a PNG (`path`: a file name or a binary file)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax, tab) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1.0, 1.2]})
  values = {k: np.asarray(v, np.float64) for k, v in report["reward"]["values"].items()}
  finite = np.concatenate([v for v in values.values() if v.size] or [np.zeros(1)])
  lo, hi = float(finite.min()), float(finite.max())
  edges = np.linspace(lo, hi if hi > lo else lo + 1.0, int(bins) + 1)
  for name, v in values.items():
    if v.size:
      ax.hist(v, bins=edges, alpha=0.55, label=f"{name} (mean {v.mean():.3g}, n={v.size})")
  ax.set_xlabel(f"reward: {report['reward']['name']}")
  ax.set_ylabel("queries")
  ax.set_title("reward of generated queries, before / after alignment")
  ax.legend(fontsize=8)
  measures = report["measures"]
  tab.axis("off")
  table = tab.table(cellText=[[_cell(s["metrics"][m["name"]]) for m in measures] for s in report["systems"]],
                    rowLabels=[s["label"] for s in report["systems"]], colLabels=[m["label"] for m in measures],
                    loc="center", cellLoc="center")
  table.auto_set_font_size(False)
  table.set_fontsize(9)
  table.scale(1.0, 1.6)
  tab.set_title("retrieval on the evaluation queries")
  fig.tight_layout()
  fig.savefig(path, dpi=110, format="png")
  plt.close(fig)


def write_report(out_dir: str | os.PathLike, report: Mapping[str, Any], bins: int = 30) -> dict[str, str]:
  """Writes report.md, report.json and report.png into `out_dir` (a directory or a gs:// URL), each
  atomically; returns their paths."""
  import io

  out = storage.as_path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {"markdown": str(out / "report.md"), "json": str(out / "report.json"), "png": str(out / "report.png")}
  for key, text in (("markdown", markdown(report)), ("json", json.dumps(report, indent=1) + "\n")):
    storage.write_bytes_atomic(paths[key], text.encode("utf-8"))
  png = io.BytesIO()
  plot(report, png, bins)
  storage.write_bytes_atomic(paths["png"], png.getvalue())
  return paths
