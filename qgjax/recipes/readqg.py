r"""The ReadQG recipe as pipeline stages: `recipe = "readqg"`.

  qgjax pipeline --config configs/readqg_recipe.py:tiny
  qgjax pipeline --config configs/readqg_recipe.py --config.generator=/models/flan-t5-base
  qgjax pipeline --config configs/readqg_recipe.py:decoder        # SmolLM2 as the frozen generator

split (qgjax.jobs.split) -> pairs (document-centric top-m / bottom-m judged queries per
document, grades min-max rescaled: qgjax.methods.readqg.pairs) -> align (soft instruction +
relevance prompts on a frozen T5 or decoder-only LM: configs/readqg.py) -> generate (r=1 and
r=0 queries per document: qgjax.methods.readqg.generate) -> ce_readqg (cross-encoder, BCE + query margin loss, on
the generated r=1 / r=0 queries) and ce_supervised (the same on the collection's own training
queries, a reference) -> evaluate_bm25 / evaluate_readqg (BM25 top-100 re-ranked, plus the
generated queries' diversity and rel+ / rel- / Δrel) / evaluate_supervised -> <workdir>/report.
"""

from __future__ import annotations

import json
import os
import pathlib

from qgjax.data import storage
from qgjax.pipeline.runner import Recipe, System
from qgjax.pipeline.stage import Stage, has_export, has_file, has_sharded
from qgjax.recipes import jobs
from qgjax.recipes.split import SPLIT, split_data

SYSTEMS = (System("bm25", "BM25", "evaluate_bm25", "bm25"),
           System("supervised", "BM25 + CE (collection's training queries)", "evaluate_supervised", "bm25+rerank"),
           System("readqg", "BM25 + CE (ReadQG r=1 / r=0 queries)", "evaluate_readqg", "bm25+rerank"))


def _pairs(p, at):
  return {"data_dir": split_data(at), "workdir": at("self"), "split": "train"}


def _align(p, at):
  return {"data.train": os.path.join(at("pairs"), "pairs.jsonl"), "data.corpus": split_data(at),
          "model.name": p.generator, "workdir": at("self"), "export.enabled": True,
          "export.dir": os.path.join(at("self"), "export")}


def _generate(p, at):
  return {"model.name": os.path.join(at("align"), "export"), "data.corpus": split_data(at),
          "output_dir": at("self")}


def _ce(pairs_file):
  def wire(p, at):
    return {"data.train": pairs_file(at), "data.corpus": split_data(at), "model.name": p.encoder,
            "workdir": at("self"), "export.enabled": True, "export.dir": os.path.join(at("self"), "export")}
  return wire


def _evaluate(ce: str | None, quality: bool = False):
  def wire(p, at):
    out = {"data_dir": split_data(at), "split": "test", "workdir": at("self"),
           "retriever": "bm25" if ce is None else "bm25+rerank"}
    if ce is not None:
      out["rerank.model"] = os.path.join(at(ce), "export")
    if quality:
      out.update({"reports": ("query_quality",), "query_quality.input": at("generate"),
                  "query_quality.encoder": p.encoder, "query_quality.label_field": "r"})
    return out
  return wire


STAGES: tuple[Stage, ...] = (
    SPLIT,
    Stage("pairs", jobs.READQG_PAIRS, ("pairs",), ("split",), _pairs, has_file("pairs.jsonl")),
    Stage("align", jobs.TRAIN, ("align",), ("pairs",), _align, has_export()),
    Stage("generate", jobs.READQG_GENERATE, ("generate",), ("align",), _generate,
          lambda d: has_sharded()(d) and (d / "ce_pairs.jsonl").is_file()),
    Stage("ce_readqg", jobs.TRAIN, ("cross_encoder",), ("generate",),
          _ce(lambda at: os.path.join(at("generate"), "ce_pairs.jsonl")), has_export()),
    Stage("ce_supervised", jobs.TRAIN, ("cross_encoder",), ("pairs",),
          _ce(lambda at: os.path.join(at("pairs"), "ce_pairs.jsonl")), has_export()),
    Stage("evaluate_bm25", jobs.EVALUATE, ("evaluate",), ("split",), _evaluate(None), has_file("metrics.json")),
    Stage("evaluate_supervised", jobs.EVALUATE, ("evaluate",), ("ce_supervised",), _evaluate("ce_supervised"),
          has_file("metrics.json")),
    Stage("evaluate_readqg", jobs.EVALUATE, ("evaluate",), ("ce_readqg", "generate"), _evaluate("ce_readqg", True),
          has_file("metrics.json")),
)


def _mean_token_logprobs(out_dir: pathlib.Path) -> dict[str, list[float]]:
  """Per relevance r, each generated query's mean token log-prob (all processes' parts)."""
  from qgjax.data.records import iter_records

  out: dict[str, list[float]] = {}
  for _, _, rec in iter_records(out_dir):
    out.setdefault(f"r={float(rec['r']):g}", []).append(float(rec["logprob"]) / max(int(rec["num_tokens"]), 1))
  return out


def _rewards(workdir: pathlib.Path) -> dict[str, list[float]]:
  return _mean_token_logprobs(workdir / "generate")


def _generator(config, workdir: pathlib.Path) -> tuple[bool, str]:
  meta = json.loads((workdir / "align" / "export" / "readqg.json").read_text())
  decoder = meta.get("kind") == "decoder"
  return decoder, (f"{config.generator} (decoder-only, soft prefix)" if decoder
                   else config.generator or "a random tiny T5 (no T5 weights offline)")


def _tables(config, workdir: pathlib.Path, results: dict, metrics: dict) -> list:
  quality = metrics["evaluate_readqg"]["reports"]["query_quality"]
  fmt = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
  decoder, generator = _generator(config, workdir)
  return [{"title": "Generated queries (ReadQG Table 1 style)",
           "columns": ["generator", "queries", "documents", "diversity", "rel+", "rel-", "Δrel"],
           "rows": [["ReadQG " + (generator if decoder else config.generator or "(random tiny T5)")]
                    + [fmt(quality.get(k)) for k in ("queries", "docs", "diversity", "rel+", "rel-", "delta_rel")]],
           "note": f"rel± scorer: {quality.get('scorer')}; rel- from {quality.get('rel-_from')}; diversity: mean "
                   "pairwise angular distance of a document's generated queries (both relevances)"}]


def _info(config, results: dict) -> dict:
  split, pairs, gen = results["split"], results["pairs"], results["generate"]
  return {"recipe": "readqg", "data_dir": split.get("source"), "split": split.get("how"),
          "training queries": split.get("train_queries"), "test queries": split.get("test_queries"),
          "generator": _generator(config, storage.as_path(storage.resolved(config.workdir)))[1], "encoder": config.encoder,
          "training documents (>= 2m judged queries)": pairs.get("documents"), "m": pairs.get("m"),
          "documents dropped (too few queries / one grade)": [pairs.get("dropped_few_queries"),
                                                              pairs.get("dropped_one_grade")],
          "pairs dropped (no grade gap)": pairs.get("dropped_tied_pairs"),
          "generated queries": gen.get("records"), "cross-encoder pairs (ReadQG)": gen.get("ce_pairs"),
          "soft-prompt final loss": results["align"].get("final", {}).get("loss"),
          "CE final loss (ReadQG / supervised)": [results[s].get("final", {}).get("loss")
                                                  for s in ("ce_readqg", "ce_supervised")]}


RECIPE = Recipe(name="readqg", title="qgjax ReadQG recipe report", stages=STAGES, systems=SYSTEMS,
                required=("encoder",), reward_name=lambda stage_configs: "generator mean token log-prob",
                rewards=_rewards, info=_info, tables=_tables)
