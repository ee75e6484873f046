r"""The Aligned Query Expansion recipe (arXiv 2507.11042) as pipeline stages: `recipe = "aqe"`.

  qgjax pipeline --config configs/aqe.py:tiny
  qgjax pipeline --config configs/aqe.py:method=rsft_dpo --config.workdir=runs/aqe/nfcorpus

split (training / test queries, qgjax.jobs.recipe_split) -> generate_train (N expansions per
training query, sampled) -> score_train (reward: -BM25 rank of the best gold document when
searching query + expansion) -> pairs (best vs worst; best-of-N for RSFT) -> align (RSFT, DPO or
RSFT+DPO: `method`) -> at test time, in their own processes (wall time + peak RSS each):
generate_base / generate_aligned (one greedy expansion per test query, unaligned and aligned
generator), generate_sampled + select (best of N by a qrels-free criterion, qgjax.jobs.select)
-> evaluate_bm25 / _base / _best_of_n / _aligned (BM25 over query [+ expansion]) ->
score_base / score_aligned (the gold document's BM25 rank with each generator's greedy expansion:
the report's reward histogram) -> <workdir>/report/report.{md,json,png}.
"""

from __future__ import annotations

import json
import os
import pathlib

from qgjax.config import require
from qgjax.errors import ConfigError
from qgjax.jobs.pipeline_stages import Stage, generate_prompt, _file, _sharded, _export
from qgjax.jobs.recipe_runner import run_stages, summary

METHODS = {"rsft": "rsft.jsonl", "dpo": "pairs.jsonl", "rsft_dpo": "pairs.jsonl"}
# (row key, label, evaluate stage, test-time stages whose cost it pays)
SYSTEMS = (("bm25", "BM25 (query only)", "evaluate_bm25", ()),
           ("base", "BM25 + unaligned greedy expansion", "evaluate_base", ("generate_base",)),
           ("best_of_n", "BM25 + best of N (filter: {criterion})", "evaluate_best_of_n",
            ("generate_sampled", "select")),
           ("aligned", "BM25 + aligned greedy expansion ({method})", "evaluate_aligned", ("generate_aligned",)))
ISOLATED = frozenset({"generate_base", "generate_aligned", "generate_sampled", "select", "evaluate_bm25",
                      "evaluate_base", "evaluate_best_of_n", "evaluate_aligned"})


def _split_data(at) -> str:
  return os.path.join(at("split"), "data")


def _split(p, at):
  from qgjax.jobs.pipeline_stages import _data
  return {"data_dir": _data(p), "workdir": at("self")}


def _generate(side: str, model):
  def wire(p, at):
    data = _split_data(at)
    return {"model.name": model(p, at), "data.corpus": data, "data.split": side,
            "data.queries": os.path.join(data, f"queries_{side}.jsonl"), "output_dir": at("self")}
  return wire


def _score(source: str, side: str):
  def wire(p, at):
    return {"input": at(source), "data_dir": _split_data(at), "workdir": at("self"), "split": side}
  return wire


def _pairs(p, at):
  return {"input": os.path.join(at("score_train"), "scored"), "workdir": at("self")}


def _align(p, at):
  return {"data.train": os.path.join(at("pairs"), METHODS[p.method]), "data.corpus": _split_data(at),
          "model.name": p.generator, "workdir": at("self"), "export.enabled": True,
          "export.dir": os.path.join(at("self"), "export"), "prompt": generate_prompt(p)}


def _select(p, at):
  return {"input": at("generate_sampled"), "workdir": at("self")}


def _evaluate(expansions):
  def wire(p, at):
    out = {"data_dir": _split_data(at), "split": "test", "workdir": at("self"),
           "retriever": "bm25" if expansions is None else "aqe"}
    if expansions is not None:
      out["aqe.input"] = expansions(at)
    return out
  return wire


_base = lambda p, at: p.generator
_aligned = lambda p, at: os.path.join(at("align"), "export")
_selected = lambda at: os.path.join(at("select"), "selected.jsonl")
_GREEDY, _SAMPLED = ("generate", "generate_greedy"), ("generate", "generate_sampled")

STAGES: tuple[Stage, ...] = (
    Stage("split", "recipe_split", ("split",), (), _split, _file("split.json")),
    Stage("generate_train", "generate", ("generate",), ("split",), _generate("train", _base), _sharded()),
    Stage("score_train", "score", ("score",), ("generate_train",), _score("generate_train", "train"),
          _sharded("scored")),
    Stage("pairs", "pairs", ("pairs",), ("score_train",), _pairs, _file("pairs.jsonl")),
    Stage("align", "train", ("align",), ("pairs",), _align, _export),
    Stage("generate_base", "generate", _GREEDY, ("split",), _generate("test", _base), _sharded()),
    Stage("generate_aligned", "generate", _GREEDY, ("split", "align"), _generate("test", _aligned), _sharded()),
    Stage("generate_sampled", "generate", _SAMPLED, ("split",), _generate("test", _base), _sharded()),
    Stage("select", "select", ("select",), ("generate_sampled",), _select, _file("selected.jsonl")),
    Stage("evaluate_bm25", "evaluate", ("evaluate",), ("split",), _evaluate(None), _file("metrics.json")),
    Stage("evaluate_base", "evaluate", ("evaluate",), ("generate_base",),
          _evaluate(lambda at: at("generate_base")), _file("metrics.json")),
    Stage("evaluate_best_of_n", "evaluate", ("evaluate",), ("select",), _evaluate(_selected),
          _file("metrics.json")),
    Stage("evaluate_aligned", "evaluate", ("evaluate",), ("generate_aligned",),
          _evaluate(lambda at: at("generate_aligned")), _file("metrics.json")),
    Stage("score_base", "score", ("score",), ("generate_base",), _score("generate_base", "test"),
          _sharded("scored")),
    Stage("score_aligned", "score", ("score",), ("generate_aligned",), _score("generate_aligned", "test"),
          _sharded("scored")),
)


def _check(config, configs) -> None:
  if config.method not in METHODS:
    raise ConfigError(f"aqe: config.method must be one of {', '.join(METHODS)}; got {config.method!r}")
  by = {s.name: c for s, c in configs}
  if by["generate_train"].prompt.mode != "expansion":
    raise ConfigError(f"aqe: the generate group must use prompt mode 'expansion' (got "
                      f"{by['generate_train'].prompt.mode!r}); e.g. generate.config='generate.py:mode=expansion'")
  if by["align"].task != config.method:
    raise ConfigError(f"aqe: method={config.method!r} but the align config trains task {by['align'].task!r}; "
                      f"set align.config to configs/{config.method}.py")
  for name in ("generate_base", "generate_aligned"):
    s = by[name].sampling
    if not (s.temperature == 0.0 and s.num_samples == 1 and s.num_beams == 1):
      raise ConfigError(f"aqe: stage {name} must decode greedily (generate_greedy.set: temperature=0, "
                        f"num_samples=1, num_beams=1)")


def _cost(results: dict, stages: tuple[str, ...], evaluate: str, system: str, metrics: dict) -> dict:
  """Test-time cost of a system: its generation stages + retrieval, each in its own process."""
  gen = [results[s] for s in stages]
  ev = results[evaluate]
  rss = [r.get("cost", {}).get("peak_rss_mb") for r in gen + [ev]]
  return {"expansion_s": round(sum(r.get("cost", {}).get("seconds", 0.0) for r in gen), 2),
          "sampling_s": round(sum(float(r.get("generation_s", 0.0)) for r in gen), 2),
          "tokens": int(sum(int(r.get("generated_tokens", r.get("records", 0)) or 0)
                            for r in gen if "generation_s" in r)),
          "retrieval_s": round(float(metrics["seconds"][system]), 2),
          "evaluate_s": ev.get("cost", {}).get("seconds"),
          "peak_rss_mb": max((x for x in rss if x is not None), default=None)}


def _report(config, workdir: pathlib.Path, results: dict) -> dict:
  from qgjax.evaluation.report import build_report, write_report
  from qgjax.jobs.pipeline import _rewards

  criterion = results["select"].get("criterion", "")
  rows, measures, costs = [], None, []
  for key, label, stage, paid in SYSTEMS:
    metrics = json.loads((workdir / stage / "metrics.json").read_text())
    system = "bm25" if key == "bm25" else "aqe"
    measures = measures or metrics["measures"]
    label = label.format(criterion=criterion, method=config.method)
    rows.append({"key": key, "label": label, "metrics": metrics["systems"][system]})
    c = _cost(results, paid, stage, system, metrics)
    costs.append([label] + [f"{c[k]:.1f}" if c[k] is not None else "-"
                            for k in ("expansion_s", "sampling_s", "retrieval_s", "peak_rss_mb")])
  rewards = {"unaligned": _rewards(workdir / "score_base" / "scored"),
             "aligned": _rewards(workdir / "score_aligned" / "scored")}
  split = results["split"]
  final = results["align"].get("final", {})
  info = {"recipe": "aqe", "data_dir": split.get("source"), "split": split.get("how"),
          "training queries": split.get("train_queries"), "test queries": split.get("test_queries"),
          "generator": config.generator, "method": config.method,
          "expansions per training query (N)": int(results["generate_train"].get("records", 0)
                                                    // max(int(split.get("train_queries") or 1), 1)),
          "expansion records (train)": results["generate_train"].get("records"),
          "preference pairs": results["pairs"].get("pairs"), "RSFT records": results["pairs"].get("rsft"),
          "mean train reward (all / best / chosen / rejected)": [
              results["pairs"].get(k) for k in ("mean_reward", "mean_reward_best_of_n", "mean_reward_chosen",
                                                "mean_reward_rejected")],
          "align final loss": final.get("loss"),
          "best-of-N filter": f"{criterion} over {results['select'].get('mean_candidates')} samples per test query"}
  tables = [{"title": "Test-time cost (each stage in its own process; 2 CPU cores)",
             "note": "expansion s: wall time of the generation stages (process start, model load, sampling; "
                     "best of N adds the filter); sampling s: the jitted sampling alone (compilation included); "
                     "retrieval s: BM25 indexing + search; peak RSS: the largest VmHWM of those processes",
             "columns": ["system", "expansion s", "sampling s", "retrieval s", "peak RSS MiB"], "rows": costs}]
  report = build_report(rows, measures, rewards, reward_name="bm25_rank of the gold document (test, greedy)",
                        info=info, tables=tables, title="qgjax AQE recipe report")
  return {"paths": write_report(workdir / "report", report, bins=int(config.report.bins)), "report": report}


def run(config) -> dict:
  require(config, "workdir", "generator", "method", "configs_dir")
  from qgjax.jobs.pipeline import _is_main, _say
  from qgjax.jobs.pipeline_stages import stage_config

  workdir = pathlib.Path(config.workdir).resolve()
  if config.method not in METHODS:
    raise ConfigError(f"aqe: config.method must be one of {', '.join(METHODS)}; got {config.method!r}")
  _check(config, [(s, stage_config(config, s, lambda n: str(workdir / n))) for s in STAGES])
  _, status, results, _ = run_stages(config, STAGES, ISOLATED)
  report = _report(config, workdir, results) if _is_main() else {"paths": {}, "report": {}}
  _say(f"report: {report['paths'].get('markdown', '')}")
  return summary(workdir, status, report)
