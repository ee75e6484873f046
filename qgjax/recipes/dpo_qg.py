r"""DPO-aligned query generation (arXiv 2505.19307) as a recipe: `recipe = "dpo_qg"` (the default).

  qgjax pipeline --config configs/pipeline.py:tiny
  qgjax pipeline --config configs/pipeline.py --config.workdir=runs/pipeline/nfcorpus

corpus -> generate (n/doc) -> score -> pairs -> align (DPO, `qgjax train`) -> generate 1 query/doc
with the base and with the aligned generator -> score both -> mine both -> train a MiniLM
retriever on each -> evaluate BM25, base MiniLM and both trained retrievers on the `split`
queries + qrels (training uses the corpus only) -> <workdir>/report/report.{md,json,png}.
With `equal_budget`, a third retriever trains on a seeded random subset of the aligned tuples as
large as the unaligned ones (mining keeps more of the aligned queries, so one epoch of each is not
the same training budget) and is evaluated beside them.

The paper's contrastive prompt (document + negative document -> query), with the generate
group's prompt mode "contrastive":
  contrastive.negatives = bm25 | dense   the `negatives` stage mines each document's nearest other
                                         document (qgjax.jobs.negatives) for every generate stage
                                         ("random": a random other document, no stage)
  contrastive.sft = True                 first fine-tune the generator on contrastive triples
                                         (document, mined hard negative, training query) of the
                                         collection's `triples.set.split` queries (`triples`, `sft`);
                                         the SFT model is then the base generator of every stage

The paper's bge-reranker reward without a download: with the score group's reward (or one of its
rewards) `cross_encoder` and no `cross_encoder.model` set, the `reward_model` stage first trains a
MiniLM cross-encoder from the collection's training qrels (configs/cross_encoder.py:qrels, BM25 hard
negatives), and its export is every score stage's cross-encoder. Likewise with the mine group's
`reranker.kind=cross_encoder` and no `reranker.model` (GPL's MarginMSE: `mining.store_scores=True` and
the retriever group's `loss=margin_mse`): the mine stages rerank with that trained cross-encoder.
"""

from __future__ import annotations

import json
import os
import pathlib

from qgjax.data import storage
from qgjax.pipeline.report import scored_rewards
from qgjax.pipeline.runner import Recipe, System
from qgjax.pipeline.stage import Stage, data_dir, has_export, has_file, has_sharded
from qgjax.pipeline.wiring import group_config
from qgjax.recipes import jobs


_mined_negatives = lambda p: p.contrastive.negatives in ("bm25", "dense")
_equal_budget = lambda p: bool(p.equal_budget)
_contrastive_sft = lambda p: bool(p.contrastive.sft)


def _scores_with_trained_ce(p) -> bool:
  """The score group uses the cross_encoder reward and names no model for it."""
  score = group_config(p, "score")
  return "cross_encoder" in (score.reward, *score.rewards) and not score.cross_encoder.model


def _mines_with_trained_ce(p) -> bool:
  """The mine group reranks with a cross-encoder (e.g. the teacher of loss=margin_mse) and names no model."""
  reranker = group_config(p, "mine").reranker
  return reranker.kind == "cross_encoder" and not reranker.model


def _trains_reward(p) -> bool:
  """A cross-encoder is needed (reward or mining reranker) and none is given: train one from qrels first."""
  return _scores_with_trained_ce(p) or _mines_with_trained_ce(p)


def _reward_model(p, at):
  return {"data.train": "", "data.corpus": data_dir(p), "workdir": at("self"), "export.enabled": True,
          "export.dir": os.path.join(at("self"), "export")}


def _generate(model):
  def wire(p, at):
    out = {"model.name": model(p, at), "data.corpus": data_dir(p), "output_dir": at("self")}
    if _mined_negatives(p):
      out["prompt.negative"] = os.path.join(at("negatives"), "negatives.jsonl")
    return out
  return wire


def _negatives(p, at):
  return {"data_dir": data_dir(p), "workdir": at("self"), "source": "documents", "method": p.contrastive.negatives,
          "dense.cache_dir": _embeddings(at)}


def _triples(p, at):
  return {"data_dir": data_dir(p), "workdir": at("self"), "source": "queries", "dense.cache_dir": _embeddings(at)}


def _sft(p, at):
  return {"task": "sft", "data.train": os.path.join(at("triples"), "negatives.jsonl"), "data.corpus": data_dir(p),
          "model.name": p.generator, "workdir": at("self"), "export.enabled": True,
          "export.dir": os.path.join(at("self"), "export"), "prompt": group_config(p, "generate").prompt}


def _embeddings(at) -> str:
  """<workdir>/cache/embeddings: one corpus-embedding store per (corpus, model, max_len) that every
  score, mine and evaluate stage shares, so the base encoder encodes the corpus once per run."""
  return os.path.join(os.path.dirname(at("self")), "cache", "embeddings")


def _score(source: str):
  def wire(p, at):
    out = {"input": at(source), "data_dir": data_dir(p), "workdir": at("self"), "split": p.split,
           "dense.model": p.encoder, "dense.cache_dir": _embeddings(at)}
    if _scores_with_trained_ce(p):
      out["cross_encoder.model"] = os.path.join(at("reward_model"), "export")
    return out
  return wire


def _pairs(p, at):
  return {"input": os.path.join(at("score"), "scored"), "workdir": at("self"), "data_dir": data_dir(p)}


def _align(p, at):
  return {"data.train": os.path.join(at("pairs"), "pairs.jsonl"), "data.corpus": data_dir(p),
          "model.name": _base_generator(p, at), "workdir": at("self"), "export.enabled": True,
          "export.dir": os.path.join(at("self"), "export"),
          "prompt": group_config(p, "generate").prompt}  # DPO scores the prompts the queries were sampled from


def _mine(source: str):
  def wire(p, at):
    out = {"input": at(source), "data_dir": data_dir(p), "workdir": at("self"), "encoder.model": p.encoder,
           "encoder.cache_dir": _embeddings(at)}
    if _mines_with_trained_ce(p):
      out["reranker.model"] = os.path.join(at("reward_model"), "export")
    return out
  return wire


def _retriever(source: str, budget_of: str = ""):
  """`budget_of`: a mine stage whose tuple count caps this retriever's training tuples (a seeded subset)."""
  def wire(p, at):
    out = {"data.train": os.path.join(at(source), "tuples"), "data.corpus": data_dir(p), "workdir": at("self"),
           "model.name": p.retriever_model or p.encoder, "export.enabled": True,
           "export.dir": os.path.join(at("self"), "export")}
    if budget_of:
      out["data.max_examples_like"] = os.path.join(at(budget_of), "tuples")
    return out
  return wire


def _evaluate(retriever: str, model=None):
  def wire(p, at):
    out = {"data_dir": data_dir(p), "split": p.split, "workdir": at("self"), "retriever": retriever,
           "dense.cache_dir": _embeddings(at)}
    if model is not None:
      out["dense.model"] = model(p, at)
    return out
  return wire


_base_generator = lambda p, at: os.path.join(at("sft"), "export") if _contrastive_sft(p) else p.generator
_aligned_generator = lambda p, at: os.path.join(at("align"), "export")
_encoder = lambda p, at: p.retriever_model or p.encoder   # the base of the trained retrievers
_trained = lambda stage: (lambda p, at: os.path.join(at(stage), "export"))
_FINAL = ("generate", "generate_final")
_BASE = ("sft", "negatives")   # what every generate stage reads when those stages run
GENERATE, SCORE, PAIRS, TRAIN, MINE, EVALUATE = (jobs.GENERATE, jobs.SCORE, jobs.PAIRS, jobs.TRAIN, jobs.MINE,
                                                 jobs.EVALUATE)

STAGES: tuple[Stage, ...] = (
    Stage("negatives", jobs.NEGATIVES, ("negatives",), (), _negatives, has_file("negatives.jsonl"),
          when=_mined_negatives),
    Stage("triples", jobs.NEGATIVES, ("triples",), (), _triples, has_file("negatives.jsonl"), when=_contrastive_sft),
    Stage("sft", TRAIN, ("sft",), ("triples",), _sft, has_export(), when=_contrastive_sft),
    Stage("reward_model", TRAIN, ("reward_model",), (), _reward_model, has_export(), when=_trains_reward),
    Stage("generate", GENERATE, ("generate",), _BASE, _generate(_base_generator), has_sharded()),
    Stage("score", SCORE, ("score",), ("generate", "reward_model"), _score("generate"), has_sharded("scored")),
    Stage("pairs", PAIRS, ("pairs",), ("score",), _pairs, has_file("pairs.jsonl")),
    Stage("align", TRAIN, ("align",), ("pairs", "sft"), _align, has_export()),
    Stage("generate_unaligned", GENERATE, _FINAL, _BASE, _generate(_base_generator), has_sharded()),
    Stage("generate_aligned", GENERATE, _FINAL, ("align", "negatives"), _generate(_aligned_generator),
          has_sharded()),
    Stage("score_unaligned", SCORE, ("score",), ("generate_unaligned", "reward_model"), _score("generate_unaligned"),
          has_sharded("scored")),
    Stage("score_aligned", SCORE, ("score",), ("generate_aligned", "reward_model"), _score("generate_aligned"),
          has_sharded("scored")),
    Stage("mine_unaligned", MINE, ("mine",), ("generate_unaligned", "reward_model"), _mine("generate_unaligned"),
          has_sharded("tuples")),
    Stage("mine_aligned", MINE, ("mine",), ("generate_aligned", "reward_model"), _mine("generate_aligned"),
          has_sharded("tuples")),
    Stage("retriever_unaligned", TRAIN, ("retriever",), ("mine_unaligned",), _retriever("mine_unaligned"),
          has_export()),
    Stage("retriever_aligned", TRAIN, ("retriever",), ("mine_aligned",), _retriever("mine_aligned"), has_export()),
    Stage("retriever_aligned_equal", TRAIN, ("retriever",), ("mine_aligned", "mine_unaligned"),
          _retriever("mine_aligned", budget_of="mine_unaligned"), has_export(), when=_equal_budget),
    Stage("evaluate_bm25", EVALUATE, ("evaluate",), (), _evaluate("bm25"), has_file("metrics.json")),
    Stage("evaluate_base", EVALUATE, ("evaluate",), (), _evaluate("dense", _encoder), has_file("metrics.json")),
    Stage("evaluate_unaligned", EVALUATE, ("evaluate",), ("retriever_unaligned",),
          _evaluate("dense", _trained("retriever_unaligned")), has_file("metrics.json")),
    Stage("evaluate_aligned", EVALUATE, ("evaluate",), ("retriever_aligned",),
          _evaluate("dense", _trained("retriever_aligned")), has_file("metrics.json")),
    Stage("evaluate_aligned_equal", EVALUATE, ("evaluate",), ("retriever_aligned_equal",),
          _evaluate("dense", _trained("retriever_aligned_equal")), has_file("metrics.json"), when=_equal_budget),
)

SYSTEMS = (System("bm25", "BM25", "evaluate_bm25", "bm25"),
           System("base", "{retriever} (base)", "evaluate_base", "dense"),
           System("unaligned", "{retriever} + unaligned queries", "evaluate_unaligned", "dense"),
           System("aligned", "{retriever} + aligned queries", "evaluate_aligned", "dense"),
           System("aligned_equal", "{retriever} + aligned queries, as many as unaligned", "evaluate_aligned_equal",
                  "dense"))


def _label_args(config, results: dict) -> dict:
  return {"retriever": os.path.basename(config.retriever_model.rstrip("/")) if config.retriever_model else "MiniLM"}


def _rewards(workdir: pathlib.Path) -> dict[str, list[float]]:
  return {"unaligned": scored_rewards(workdir / "score_unaligned" / "scored"),
          "aligned": scored_rewards(workdir / "score_aligned" / "scored")}


def _check(config, by: dict) -> None:
  from qgjax.errors import ConfigError

  if config.contrastive.negatives not in ("random", "bm25", "dense"):
    raise ConfigError(f"contrastive.negatives must be random, bm25 or dense; got {config.contrastive.negatives!r}")
  if "reward_model" in by and by["reward_model"].data.qrels_split == config.split:
    raise ConfigError(f"the reward model would train on the evaluation split's qrels ({config.split!r}); set "
                      "reward_model.set.data.qrels_split to a training split")
  mode = by["generate"].prompt.mode
  if (_mined_negatives(config) or _contrastive_sft(config)) and mode != "contrastive":
    raise ConfigError(f"contrastive.negatives={config.contrastive.negatives!r} / contrastive.sft="
                      f"{config.contrastive.sft} need the generate group's prompt mode 'contrastive' (it is "
                      f"{mode!r}; e.g. generate.config='generate.py:mode=contrastive')")


def _info(config, results: dict) -> dict:
  final = results.get("align", {}).get("final", {})
  info = {"data_dir": config.data_dir or "the demo corpus (qgjax/data/demo)",
          "split (evaluation)": config.split, "generator": config.generator, "encoder": config.encoder,
          "queries generated (n/doc)": results.get("generate", {}).get("records"),
          "preference pairs": results.get("pairs", {}).get("pairs"),
          "DPO final loss": final.get("loss"), "DPO eval reward accuracy": final.get("eval/rewards/accuracy")}
  if "sft" in results:
    info["contrastive SFT"] = (f"{results['triples'].get('rows')} triples ({results['triples'].get('method')} "
                               f"negatives), final loss {results['sft'].get('final', {}).get('loss')}")
  if "reward_model" in results:
    r = results["reward_model"]
    info["reward model"] = (f"cross-encoder trained from qrels: {r.get('judged_pairs')} judged pairs, {r.get('steps')} "
                            f"steps, final loss {r.get('final', {}).get('loss')}")
  if "negatives" in results:
    info["prompt negatives"] = f"{results['negatives'].get('method')}-mined nearest other document"
  for which in ("unaligned", "aligned", "aligned_equal"):  # how much each trained MiniLM saw
    summary = storage.as_path(storage.resolved(config.workdir)) / f"retriever_{which}" / "summary.json"
    if summary.is_file():
      s = json.loads(summary.read_text())
      info[f"retriever ({which})"] = (f"{s.get('train_examples')} training tuples, {s.get('steps')} steps, "
                                      f"final loss {s.get('final', {}).get('loss', float('nan')):.4f}")
  return info


def _alignment_table(workdir: pathlib.Path) -> dict | None:
  """DPO's held-out pairs by evaluation step (align/metrics.jsonl): reward accuracy, margin, loss."""
  path = workdir / "align" / "metrics.jsonl"
  if not path.is_file():
    return None
  rows = []
  for line in path.read_text().splitlines():
    r = json.loads(line) if line.strip() else {}
    if "eval/rewards/accuracy" in r:
      rows.append([r["step"], f"{r['eval/rewards/accuracy']:.3f}", f"{r.get('eval/rewards/margin', float('nan')):.3f}",
                   f"{r.get('eval/loss', float('nan')):.4f}", f"{r.get('loss', float('nan')):.4f}"])
  if not rows:
    return None
  return {"title": "Alignment: DPO on held-out pairs, by step",
          "columns": ["step", "reward accuracy", "reward margin", "eval loss", "train loss"], "rows": rows,
          "note": "pairs the alignment never trained on (data.eval_fraction of the pairs); accuracy = share of "
                  "pairs whose chosen query gets the larger implicit reward (0.5 at step 0)"}


def _retention_table(results: dict) -> dict | None:
  """Retention@k of the source document for the base and the aligned generator's queries (score_*)."""
  rows = []
  for which, label in (("unaligned", "base generator"), ("aligned", "DPO-aligned generator")):
    r = results.get(f"score_{which}", {})
    for retriever, ret in sorted(r.get("retention", {}).items()):
      rows.append([label, retriever, r.get("records")] + [f"{ret.get(f'retention@{k}', float('nan')):.4f}"
                                                         for k in (1, 10, 100)])
  if not rows:
    return None
  return {"title": "Retention of the source document (one query per document, documents alignment never saw)",
          "columns": ["queries from", "retriever", "queries", "retention@1", "retention@10", "retention@100"],
          "rows": rows, "note": "share of queries whose source document the retriever ranks within the top k "
                                "of the whole corpus"}


def _tables(config, workdir: pathlib.Path, results: dict, metrics: dict) -> list:
  return [t for t in (_alignment_table(workdir), _retention_table(results)) if t is not None]


RECIPE = Recipe(name="dpo_qg", title="qgjax pipeline report", stages=STAGES, systems=SYSTEMS,
                required=("generator", "encoder", "split"),
                reward_name=lambda stage_configs: stage_configs["score_aligned"].reward,
                rewards=_rewards, info=_info, check=_check, label_args=_label_args, tables=_tables)
