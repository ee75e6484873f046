r"""Runs the three tiny recipes with two checkouts of qgjax and compares their reports and records.

  python tools/compare_recipes.py --old /tmp/qg_old --new . --out /tmp/compare     # e.g. before/after a refactor

Each checkout runs `qgjax pipeline --config configs/{pipeline,aqe,readqg_recipe}.py:tiny` (tiny random
models from tests/tiny_lm.py, one CPU device, the same seeds) in a fresh process with PYTHONPATH set
to that checkout. Compared: every report number (systems' metrics, reward statistics, tables other than
measured costs and stage times) and every record of every sharded stage output (generated
queries, scores, pairs, tuples), with wall times, paths and timestamps left out. Prints one line per recipe and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

RECIPES = {"dpo_qg": "pipeline.py:tiny", "aqe": "aqe.py:tiny", "readqg": "readqg_recipe.py:tiny"}
USES_ENCODER = {"dpo_qg", "readqg"}
MEASURED_TABLES = ("cost", "Stage times")   # report tables of wall times and memory: measurements, not results
VOLATILE = {"seconds", "finished_at", "cost", "wall_s", "generation_s", "tokens_per_s", "docs_per_s", "workdir",
            "paths", "report", "data_dir", "source", "export", "output_dir", "elapsed_s", "peak_rss_mb"}


def _run(checkout: pathlib.Path, spec: str, workdir: pathlib.Path, models: tuple[str, str]) -> None:
  env = dict(os.environ, PYTHONPATH=str(checkout), XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu", QGJAX_PROGRESS="0", QGJAX_COMPILATION_CACHE="0")
  cmd = [sys.executable, "-m", "qgjax.cli", "pipeline", "--config", str(checkout / "configs" / spec),
         f"--config.workdir={workdir}", f"--config.generator={models[0]}"]
  if workdir.name in USES_ENCODER:
    cmd.append(f"--config.encoder={models[1]}")
  proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
  if proc.returncode:
    raise SystemExit(f"{checkout}: {spec} failed:\n{proc.stderr[-3000:]}")


def _strip(x, roots: dict[str, str]):
  """x without volatile keys, with the run's own directories (workdir, checkout) as placeholders."""
  if isinstance(x, dict):
    return {k: _strip(v, roots) for k, v in x.items() if k not in VOLATILE}
  if isinstance(x, list):
    return [_strip(v, roots) for v in x]
  if isinstance(x, str):
    for root, name in roots.items():
      x = x.replace(root, name)
  return x


def _outputs(workdir: pathlib.Path, checkout: pathlib.Path) -> dict[str, object]:
  roots = {str(workdir): "<workdir>", str(checkout): "<checkout>"}
  report = json.loads((workdir / "report" / "report.json").read_text())
  report["tables"] = [t for t in report.get("tables", []) if not any(m in t["title"] for m in MEASURED_TABLES)]
  out = {"report": _strip(report, roots)}
  for shard in sorted(workdir.rglob("shard-*.jsonl")):
    rel = str(shard.relative_to(workdir))
    out[rel] = [_strip(json.loads(line), roots) for line in shard.read_text().splitlines() if line.strip()]
  for name in ("pairs.jsonl", "rsft.jsonl", "selected.jsonl", "ce_pairs.jsonl", "metrics.json"):
    for f in sorted(workdir.rglob(name)):
      text = f.read_text()
      out[str(f.relative_to(workdir))] = (_strip(json.loads(text), roots) if name.endswith(".json") else
                                          [_strip(json.loads(line), roots) for line in text.splitlines()
                                           if line.strip()])
  return out


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--old", required=True)
  p.add_argument("--new", default=".")
  p.add_argument("--out", required=True)
  p.add_argument("--recipes", default=",".join(RECIPES))
  a = p.parse_args()
  out = pathlib.Path(a.out).resolve()
  sys.path.insert(0, str(pathlib.Path(a.new).resolve() / "tests"))
  from tiny_lm import make_tiny_bert, make_tiny_lm
  models = (make_tiny_lm(str(out / "models" / "tiny_lm")), make_tiny_bert(str(out / "models" / "tiny_bert")))
  bad = 0
  for name in a.recipes.split(","):
    results = {}
    for side in ("old", "new"):
      work = out / side / name
      checkout = pathlib.Path(getattr(a, side)).resolve()
      if not (work / "report" / "report.json").is_file():   # a finished run is reused
        _run(checkout, RECIPES[name], work, models)
      results[side] = _outputs(work, checkout)
    old, new = results["old"], results["new"]
    diffs = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    records = sum(len(v) for k, v in new.items() if isinstance(v, list))
    print(f"{name}: {len(new)} outputs, {records} records, report systems "
          f"{[s['key'] for s in new['report']['systems']]}: " + ("identical" if not diffs else f"DIFFER in {diffs}"))
    bad += bool(diffs)
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
