r"""The ReadQG recipe as pipeline stages: `recipe = "readqg"`.

  qgjax pipeline --config configs/readqg_recipe.py:tiny
  qgjax pipeline --config configs/readqg_recipe.py --config.generator=/models/flan-t5-base
  qgjax pipeline --config configs/readqg_recipe.py:decoder        # SmolLM2 as the frozen generator

split (qgjax.jobs.recipe_split) -> pairs (document-centric top-m / bottom-m judged queries per
document, grades min-max rescaled: qgjax.jobs.readqg_pairs) -> align (soft instruction +
relevance prompts on a frozen T5 or decoder-only LM: configs/readqg.py) -> generate (r=1 and
r=0 queries per document: qgjax.jobs.readqg_generate) -> ce_readqg (cross-encoder, BCE + query margin loss, on
the generated r=1 / r=0 queries) and ce_supervised (the same on the collection's own training
queries, a reference) -> evaluate_bm25 / evaluate_readqg (BM25 top-100 re-ranked, plus the
generated queries' diversity and rel+ / rel- / Δrel) / evaluate_supervised -> <workdir>/report.
"""

from __future__ import annotations

import json
import os
import pathlib

from qgjax.config import require
from qgjax.jobs.pipeline_stages import Stage, _export, _file, _sharded
from qgjax.jobs.recipe_aqe import _split, _split_data
from qgjax.jobs.recipe_runner import run_stages, summary

SYSTEMS = (("bm25", "BM25", "evaluate_bm25", "bm25"),
           ("supervised", "BM25 + CE (collection's training queries)", "evaluate_supervised", "bm25+rerank"),
           ("readqg", "BM25 + CE (ReadQG r=1 / r=0 queries)", "evaluate_readqg", "bm25+rerank"))


def _pairs(p, at):
  return {"data_dir": _split_data(at), "workdir": at("self"), "split": "train"}


def _align(p, at):
  return {"data.train": os.path.join(at("pairs"), "pairs.jsonl"), "data.corpus": _split_data(at),
          "model.name": p.generator, "workdir": at("self"), "export.enabled": True,
          "export.dir": os.path.join(at("self"), "export")}


def _generate(p, at):
  return {"model.name": os.path.join(at("align"), "export"), "data.corpus": _split_data(at),
          "output_dir": at("self")}


def _ce(pairs_file):
  def wire(p, at):
    return {"data.train": pairs_file(at), "data.corpus": _split_data(at), "model.name": p.encoder,
            "workdir": at("self"), "export.enabled": True, "export.dir": os.path.join(at("self"), "export")}
  return wire


def _evaluate(ce: str | None, quality: bool = False):
  def wire(p, at):
    out = {"data_dir": _split_data(at), "split": "test", "workdir": at("self"),
           "retriever": "bm25" if ce is None else "bm25+rerank"}
    if ce is not None:
      out["rerank.model"] = os.path.join(at(ce), "export")
    if quality:
      out.update({"reports": ("query_quality",), "query_quality.input": at("generate"),
                  "query_quality.encoder": p.encoder, "query_quality.label_field": "r"})
    return out
  return wire


STAGES: tuple[Stage, ...] = (
    Stage("split", "recipe_split", ("split",), (), _split, _file("split.json")),
    Stage("pairs", "readqg_pairs", ("pairs",), ("split",), _pairs, _file("pairs.jsonl")),
    Stage("align", "train", ("align",), ("pairs",), _align, _export),
    Stage("generate", "readqg_generate", ("generate",), ("align",), _generate,
          lambda d: _sharded()(d) and (d / "ce_pairs.jsonl").is_file()),
    Stage("ce_readqg", "train", ("cross_encoder",), ("generate",),
          _ce(lambda at: os.path.join(at("generate"), "ce_pairs.jsonl")), _export),
    Stage("ce_supervised", "train", ("cross_encoder",), ("pairs",),
          _ce(lambda at: os.path.join(at("pairs"), "ce_pairs.jsonl")), _export),
    Stage("evaluate_bm25", "evaluate", ("evaluate",), ("split",), _evaluate(None), _file("metrics.json")),
    Stage("evaluate_supervised", "evaluate", ("evaluate",), ("ce_supervised",), _evaluate("ce_supervised"),
          _file("metrics.json")),
    Stage("evaluate_readqg", "evaluate", ("evaluate",), ("ce_readqg", "generate"), _evaluate("ce_readqg", True),
          _file("metrics.json")),
)


def _mean_token_logprobs(out_dir: pathlib.Path) -> dict[str, list[float]]:
  from qgjax.data.sharded_writer import iter_sharded

  out: dict[str, list[float]] = {}
  for rec in iter_sharded(out_dir, require_complete=True):
    out.setdefault(f"r={float(rec['r']):g}", []).append(float(rec["logprob"]) / max(int(rec["num_tokens"]), 1))
  return out


def _report(config, workdir: pathlib.Path, results: dict) -> dict:
  from qgjax.evaluation.report import build_report, write_report

  rows, measures = [], None
  for key, label, stage, system in SYSTEMS:
    metrics = json.loads((workdir / stage / "metrics.json").read_text())
    measures = measures or metrics["measures"]
    rows.append({"key": key, "label": label, "metrics": metrics["systems"][system]})
    if stage == "evaluate_readqg":
      quality = metrics["reports"]["query_quality"]
  fmt = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
  meta = json.loads((workdir / "align" / "export" / "readqg.json").read_text())
  decoder = meta.get("kind") == "decoder"
  generator = (f"{config.generator} (decoder-only, soft prefix)" if decoder
               else config.generator or "a random tiny T5 (no T5 weights offline)")
  tables = [{"title": "Generated queries (ReadQG Table 1 style)",
             "columns": ["generator", "queries", "documents", "diversity", "rel+", "rel-", "Δrel"],
             "rows": [["ReadQG " + (generator if decoder else config.generator or "(random tiny T5)")]
                      + [fmt(quality.get(k)) for k in ("queries", "docs", "diversity", "rel+", "rel-", "delta_rel")]],
             "note": f"rel± scorer: {quality.get('scorer')}; rel- from {quality.get('rel-_from')}; diversity: mean "
                     "pairwise angular distance of a document's generated queries (both relevances)"}]
  split, pairs, gen = results["split"], results["pairs"], results["generate"]
  info = {"recipe": "readqg", "data_dir": split.get("source"), "split": split.get("how"),
          "training queries": split.get("train_queries"), "test queries": split.get("test_queries"),
          "generator": generator, "encoder": config.encoder,
          "training documents (>= 2m judged queries)": pairs.get("documents"), "m": pairs.get("m"),
          "documents dropped (too few queries / one grade)": [pairs.get("dropped_few_queries"),
                                                              pairs.get("dropped_one_grade")],
          "pairs dropped (no grade gap)": pairs.get("dropped_tied_pairs"),
          "generated queries": gen.get("records"), "cross-encoder pairs (ReadQG)": gen.get("ce_pairs"),
          "soft-prompt final loss": results["align"].get("final", {}).get("loss"),
          "CE final loss (ReadQG / supervised)": [results[s].get("final", {}).get("loss")
                                                  for s in ("ce_readqg", "ce_supervised")]}
  report = build_report(rows, measures, _mean_token_logprobs(workdir / "generate"),
                        reward_name="generator mean token log-prob", info=info, tables=tables,
                        title="qgjax ReadQG recipe report")
  return {"paths": write_report(workdir / "report", report, bins=int(config.report.bins)), "report": report}


def run(config) -> dict:
  require(config, "workdir", "encoder", "configs_dir")
  from qgjax.jobs.pipeline import _is_main, _say

  workdir = pathlib.Path(config.workdir).resolve()
  _, status, results, _ = run_stages(config, STAGES)
  report = _report(config, workdir, results) if _is_main() else {"paths": {}, "report": {}}
  _say(f"report: {report['paths'].get('markdown', '')}")
  return summary(workdir, status, report)
