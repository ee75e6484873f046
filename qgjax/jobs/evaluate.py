"""`qgjax evaluate`: retrieval on a BEIR directory -> IR metrics (JSON), TREC runs, a table.

  qgjax evaluate --config configs/evaluate.py
  qgjax evaluate --config configs/evaluate.py --config.data_dir=../shared/data/nfcorpus

Each system in `config.retriever` (comma-separated; stages joined by '+', e.g. `bm25+rerank`)
produces a run `{query_id: {doc_id: score}}` over the judged queries of `config.split`;
metrics follow trec_eval (see qgjax.evaluation.ir_metrics). With `ignore_identical_ids` (the
default, as BEIR's EvaluateRetrieval and MTEB do) a document whose id equals the query's is taken
out of that query's run first: on ArguAna or Quora the query's own text is in the corpus, comes
first and is unjudged. Outputs in `config.workdir`: metrics.json and run.<system>.trec.

On P processes the corpus and query encodes of a dense system run 1/P on each process
(`qgjax.parallel.data_parallel`), every process searches every query, and process 0 alone
writes the outputs.
"""

from __future__ import annotations

import importlib
import json
import pathlib
import re
import time
from typing import Any, Callable

from qgjax.config import require
from qgjax.data import demo_dir, storage
from qgjax.data.beir import load_beir, queries_path
from qgjax.errors import ConfigError, InputError
from qgjax.evaluation import ir_metrics
from qgjax.parallel.distributed import is_main_process

Run = dict[str, dict[str, float]]

# stage -> "module:function"; a stage not listed resolves to qgjax.retrieval.<stage>:evaluation_run.
STAGES: dict[str, str] = {
    "bm25": "qgjax.retrieval.bm25:bm25_run",
    "rerank": "qgjax.retrieval.dense:rerank_run",
    "aqe": "qgjax.methods.aqe.expansion:evaluation_run",
}


def _modules_with(package: str, attr: str) -> list[str]:
  """Modules of `package` whose source defines `attr` (the stages and reports that resolve by name)."""
  import pkgutil
  root = pathlib.Path(importlib.import_module(package).__file__).parent
  return [m.name for m in pkgutil.iter_modules([str(root)])
          if f"def {attr}(" in (root / f"{m.name}.py").read_text(encoding="utf-8")]


def _resolve(name: str, table: dict[str, str], package: str, attr: str) -> Callable:
  target = table.get(name, f"{package}.{name}:{attr}")
  module, _, fn = target.partition(":")
  try:
    return getattr(importlib.import_module(module), fn)
  except ModuleNotFoundError as e:
    if e.name and module.startswith(e.name):  # the module itself is missing, not a dependency
      known = ", ".join(sorted(set(table) | set(_modules_with(package, attr)))) or "none"
      raise ConfigError(f"unknown {package.split('.')[-1]} stage '{name}' (no {module}); "
                        f"built in: {known}") from None
    raise
  except AttributeError:
    raise ConfigError(f"{module} has no {fn}() for '{name}'") from None


def parse_systems(spec: str) -> list[list[str]]:
  """'bm25, bm25+rerank' -> [['bm25'], ['bm25', 'rerank']]."""
  systems = []
  for part in spec.split(","):
    stages = [s.strip() for s in part.split("+") if s.strip()]
    if stages:
      systems.append(stages)
  if not systems:
    raise ConfigError("config.retriever names no system (e.g. 'bm25')")
  return systems


def _safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def run(config: Any) -> dict:
  """Holds `config.workdir`'s one-writer lock (`qgjax.data.workdir_lock`) for the whole job."""
  from qgjax.data.workdir_lock import lock_workdir
  from qgjax.parallel.distributed import is_main_process

  require(config, "workdir")
  with lock_workdir(config.workdir, "evaluate", enabled=is_main_process()):
    return _run(config)


def _run(config: Any) -> dict:
  require(config, "workdir", "retriever", "split", "depth", "measures")
  measures = list(config.measures)
  for m in measures:
    ir_metrics.parse_measure(m)
  systems = parse_systems(config.retriever)
  data_dir = config.data_dir or str(demo_dir())
  data = load_beir(data_dir, config.split)
  queries = data.queries
  if not queries:
    raise InputError(f"no query of {queries_path(data_dir, config.split).name} has judgements in "
                     f"qrels/{config.split}.tsv (do the ids match?)", path=str(data_dir))
  if config.max_queries:
    queries = dict(list(queries.items())[: int(config.max_queries)])
  qrels = {q: data.qrels[q] for q in queries}
  # every stage resolved before any system runs: a misspelt one fails first
  stage_fns = {s: _resolve(s, STAGES, "qgjax.retrieval", "evaluation_run") for stages in systems for s in stages}
  workdir = storage.as_path(config.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  main = is_main_process()

  results: dict[str, dict[str, float]] = {}
  runs: dict[str, Run] = {}
  timings: dict[str, float] = {}
  run_files: dict[str, str] = {}
  cache: dict[tuple[str, ...], Run] = {}  # shared prefixes (bm25 for bm25+rerank) run once
  removed: dict[str, int] = {}  # per system: queries whose own id was in their run
  for stages in systems:
    name = "+".join(stages)
    start = time.perf_counter()
    previous = None
    for i in range(len(stages)):
      prefix = tuple(stages[: i + 1])
      if prefix not in cache:
        cache[prefix] = stage_fns[stages[i]](config, data, queries, previous)
      previous = cache[prefix]
    if config.ignore_identical_ids:
      removed[name] = sum(q in docs for q, docs in previous.items())
      previous = {q: {d: sc for d, sc in docs.items() if d != q} for q, docs in previous.items()}
    runs[name] = previous
    timings[name] = time.perf_counter() - start
    results[name] = ir_metrics.evaluate(previous, qrels, measures)
    path = workdir / f"run.{_safe(name)}.trec"
    if main:
      ir_metrics.write_trec_run(path, previous, tag=_safe(name))
    run_files[name] = str(path)

  reports = {}
  for report in config.reports:
    fn = _resolve(report, {}, "qgjax.evaluation", "report")
    reports[report] = fn(config, data, runs)

  metrics = {
      "data_dir": storage.absolute(data_dir), "split": config.split, "num_queries": len(queries),
      "num_docs": len(data.corpus), "measures": measures, "systems": results,
      "seconds": timings, "run_files": run_files, "reports": reports, "identical_ids_removed": removed,
      "config": json.loads(config.to_json()),
  }
  if not main:
    return {"metrics_file": str(workdir / "metrics.json"), "systems": results}
  from qgjax.data.safe_files import write_json_atomic
  write_json_atomic(workdir / "metrics.json", metrics, sort_keys=False)
  print(f"{pathlib.Path(data_dir).name} ({config.split}): {len(queries)} queries, "
        f"{len(data.corpus)} documents")
  print(ir_metrics.format_table(results, measures))
  return {"metrics_file": str(workdir / "metrics.json"), "systems": results,
          **({"reports": reports} if reports else {})}
