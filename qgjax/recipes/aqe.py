r"""The Aligned Query Expansion recipe (arXiv 2507.11042) as pipeline stages: `recipe = "aqe"`.

  qgjax pipeline --config configs/aqe.py:tiny
  qgjax pipeline --config configs/aqe.py:method=rsft_dpo --config.workdir=runs/aqe/nfcorpus

split (training / test queries, qgjax.jobs.split) -> generate_train (N expansions per
training query, sampled) -> tune_repeats (query_repeats="tune": how many times BM25 sees the query
before the expansion, chosen on the training queries; qgjax.methods.aqe.repeats) -> score_train
(reward: -BM25 rank of the best gold document when searching query + expansion) -> pairs (best vs worst; best-of-N for RSFT) -> align (RSFT, DPO or
RSFT+DPO as one joint loss, or RSFT then DPO from the RSFT weights: `method`) -> at test time, in their own processes (wall time + peak RSS each):
generate_base / generate_aligned (one greedy expansion per test query, unaligned and aligned
generator), generate_sampled + select (best of N by a qrels-free criterion, qgjax.methods.aqe.select)
-> evaluate_bm25 / _base / _best_of_n / _aligned (BM25 over query [+ expansion]) ->
score_base / score_aligned (the gold document's BM25 rank with each generator's greedy expansion:
the report's reward histogram) -> <workdir>/report/report.{md,json,png}.

tune_on_dev (with split.set.dev_queries = N > 0: N training queries set apart, never trained on):
generate_dev_base / generate_dev_aligned (one greedy expansion per dev query) -> tune_dev_base /
tune_dev_aligned (the query's repeat count for that generator's own expansions, chosen on the dev
queries), and evaluate_base / score_base and evaluate_aligned / score_aligned search with it: an
aligned expansion is better than the unaligned samples tune_repeats sees, so its best weight differs.

test_samples = N > 0 (with tune_on_dev): generate_dev_joined / generate_joined (N sampled expansions per
dev / test query from the aligned generator, the generate_sampled settings) -> tune_dev_joined (k for
each query's N samples joined into one expansion, on the dev queries) -> evaluate_joined (BM25 over
query x k + the joined samples): MuGI / query2doc-style multi-sample expansion, the report's last row.
"""

from __future__ import annotations

import os
import pathlib

from qgjax.errors import ConfigError
from qgjax.pipeline.report import scored_rewards
from qgjax.pipeline.runner import Recipe, System
from qgjax.pipeline.stage import Stage, has_export, has_file, has_sharded
from qgjax.pipeline.wiring import group_config
from qgjax.recipes import jobs
from qgjax.recipes.split import SPLIT, split_data

# method -> (the align stage's training file, its task); rsft_then_dpo first runs align_rsft (RSFT
# on rsft.jsonl), then DPO starting from the RSFT weights, which are also DPO's reference model
METHODS = {"rsft": ("rsft.jsonl", "rsft"), "dpo": ("pairs.jsonl", "dpo"), "rsft_dpo": ("pairs.jsonl", "rsft_dpo"),
           "rsft_then_dpo": ("pairs.jsonl", "dpo")}
SYSTEMS = (System("bm25", "BM25 (query only)", "evaluate_bm25", "bm25"),
           System("base", "BM25 + unaligned greedy expansion", "evaluate_base", "aqe"),
           System("best_of_n", "BM25 + best of N (filter: {criterion})", "evaluate_best_of_n", "aqe"),
           System("aligned", "BM25 + aligned greedy expansion ({method})", "evaluate_aligned", "aqe"),
           System("joined", "BM25 + aligned, {test_samples} samples joined ({method})", "evaluate_joined", "aqe"))
PAID = {"bm25": (), "base": ("generate_base",), "best_of_n": ("generate_sampled", "select"),
        "aligned": ("generate_aligned",), "joined": ("generate_joined",)}   # test-time stages each system pays
ISOLATED = frozenset({"generate_base", "generate_aligned", "generate_sampled", "select", "evaluate_bm25",
                      "evaluate_base", "evaluate_best_of_n", "evaluate_aligned", "generate_joined",
                      "evaluate_joined"})


def _generate(side: str, model):
  def wire(p, at):
    data = split_data(at)
    return {"model.name": model(p, at), "data.corpus": data, "data.split": side,
            "data.queries": os.path.join(data, f"queries_{side}.jsonl"), "output_dir": at("self")}
  return wire


def _tuned(p) -> bool:
  """Whether the query's repeat count is chosen by the tune_repeats stage (query_repeats="tune")."""
  return str(p.get("query_repeats", 1)) == "tune"


def _repeat_count(value, key: str, word: str) -> int:
  """`value` as a repeat count >= 1 (a digit string too: --config.<key>=3 on a str field), else a
  ConfigError naming `key` and its keyword alternative `word`."""
  if isinstance(value, str) and value.strip().isdigit():
    value = int(value)
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ConfigError(f"aqe: config.{key} must be '{word}' or an integer >= 1; got {value!r}")
  return value


def _own_reward_repeats(p):
  """`reward_query_repeats` when it is set apart from the search's count, else None ("same")."""
  k = p.get("reward_query_repeats", "same")
  return None if str(k).strip().lower() in ("same", "") else k


def _repeats(p, at) -> dict:
  """The repeat count every BM25 search over query + expansion uses: tune_repeats' file, or the int."""
  if _tuned(p):
    return {"aqe.query_repeats_file": os.path.join(at("tune_repeats"), "repeats.json")}
  return {"aqe.query_repeats": _repeat_count(p.get("query_repeats", 1), "query_repeats", "tune")}


def _reward_repeats(p, at) -> dict:
  """The repeat count of the alignment reward (score_train): `reward_query_repeats`, or "same" as the
  search's. A small k while aligning lets the expansion move the gold document's rank (with a large
  tuned k most of a query's expansions tie); the test-time search keeps its own k."""
  k = _own_reward_repeats(p)
  if k is None:
    return _repeats(p, at)
  return {"aqe.query_repeats": _repeat_count(k, "reward_query_repeats", "same")}


def _tune_repeats(p, at):
  return {"input": at("generate_train"), "data_dir": split_data(at), "workdir": at("self"), "split": "train"}


_on_dev = lambda p: bool(p.tune_on_dev)
_joined = lambda p: int(p.get("test_samples", 0) or 0) > 0


def _tune_dev(source: str, join: bool = False):
  """The repeat count for one generator's greedy expansions of the dev queries (`join`: for each query's
  test_samples sampled expansions joined into one)."""
  def wire(p, at):
    return {"input": at(source), "data_dir": split_data(at), "workdir": at("self"), "split": "dev",
            "samples_per_query": 1, **({"join_samples": int(p.test_samples)} if join else {})}
  return wire


def _greedy_repeats(tune_stage: str):
  """The repeat count a greedy (or joined) system searches with: its own dev-tuned one (tune_on_dev), else
  the recipe's."""
  def repeats(p, at) -> dict:
    if _on_dev(p):
      return {"aqe.query_repeats_file": os.path.join(at(tune_stage), "repeats.json")}
    return _repeats(p, at)
  return repeats


def _score(source: str, side: str, repeats=_repeats):
  def wire(p, at):
    return {"input": at(source), "data_dir": split_data(at), "workdir": at("self"), "split": side,
            **repeats(p, at)}
  return wire


def _pairs(p, at):
  return {"input": os.path.join(at("score_train"), "scored"), "workdir": at("self")}


def _align_with(train_file, model):
  def wire(p, at):
    if p.method not in METHODS:
      raise ConfigError(f"aqe: config.method must be one of {', '.join(METHODS)}; got {p.method!r}")
    return {"data.train": os.path.join(at("pairs"), train_file(p)), "data.corpus": split_data(at),
            "model.name": model(p, at), "workdir": at("self"), "export.enabled": True,
            "export.dir": os.path.join(at("self"), "export"), "prompt": group_config(p, "generate").prompt}
  return wire


_sequential = lambda p: p.method == "rsft_then_dpo"
_align_start = lambda p, at: os.path.join(at("align_rsft"), "export") if _sequential(p) else p.generator
_align_rsft = _align_with(lambda p: "rsft.jsonl", lambda p, at: p.generator)
_align = _align_with(lambda p: METHODS[p.method][0], _align_start)


def _select(p, at):
  return {"input": at("generate_sampled"), "workdir": at("self")}


def _evaluate(expansions, repeats=_repeats, join: bool = False):
  def wire(p, at):
    out = {"data_dir": split_data(at), "split": "test", "workdir": at("self"),
           "retriever": "bm25" if expansions is None else "aqe"}
    if expansions is not None:
      out["aqe.input"] = expansions(at)
      out.update(repeats(p, at))
    if join:
      out["aqe.join_samples"] = int(p.test_samples)
    return out
  return wire


_base = lambda p, at: p.generator
_aligned = lambda p, at: os.path.join(at("align"), "export")
_selected = lambda at: os.path.join(at("select"), "selected.jsonl")
_GREEDY, _SAMPLED = ("generate", "generate_greedy"), ("generate", "generate_sampled")
_JOINED = ("generate", "generate_sampled", "generate_joined")

STAGES: tuple[Stage, ...] = (
    SPLIT,
    Stage("generate_train", jobs.GENERATE, ("generate",), ("split",), _generate("train", _base), has_sharded()),
    Stage("tune_repeats", jobs.AQE_REPEATS, ("tune_repeats",), ("generate_train",), _tune_repeats,
          has_file("repeats.json"), when=_tuned),
    Stage("score_train", jobs.SCORE, ("score",), ("generate_train", "tune_repeats"), _score("generate_train", "train", _reward_repeats),
          has_sharded("scored")),
    Stage("pairs", jobs.PAIRS, ("pairs",), ("score_train",), _pairs, has_file("pairs.jsonl")),
    Stage("align_rsft", jobs.TRAIN, ("align_rsft",), ("pairs",), _align_rsft, has_export(), when=_sequential),
    Stage("align", jobs.TRAIN, ("align",), ("pairs", "align_rsft"), _align, has_export()),
    Stage("generate_base", jobs.GENERATE, _GREEDY, ("split",), _generate("test", _base), has_sharded()),
    Stage("generate_aligned", jobs.GENERATE, _GREEDY, ("split", "align"), _generate("test", _aligned), has_sharded()),
    Stage("generate_dev_base", jobs.GENERATE, _GREEDY, ("split",), _generate("dev", _base), has_sharded(),
          when=_on_dev),
    Stage("generate_dev_aligned", jobs.GENERATE, _GREEDY, ("split", "align"), _generate("dev", _aligned),
          has_sharded(), when=_on_dev),
    Stage("tune_dev_base", jobs.AQE_REPEATS, ("tune_dev",), ("generate_dev_base",), _tune_dev("generate_dev_base"),
          has_file("repeats.json"), when=_on_dev),
    Stage("tune_dev_aligned", jobs.AQE_REPEATS, ("tune_dev",), ("generate_dev_aligned",),
          _tune_dev("generate_dev_aligned"), has_file("repeats.json"), when=_on_dev),
    Stage("generate_dev_joined", jobs.GENERATE, _JOINED, ("split", "align"), _generate("dev", _aligned),
          has_sharded(), when=_joined),
    Stage("tune_dev_joined", jobs.AQE_REPEATS, ("tune_joined",), ("generate_dev_joined",),
          _tune_dev("generate_dev_joined", join=True), has_file("repeats.json"), when=_joined),
    Stage("generate_sampled", jobs.GENERATE, _SAMPLED, ("split",), _generate("test", _base), has_sharded()),
    Stage("select", jobs.AQE_SELECT, ("select",), ("generate_sampled",), _select, has_file("selected.jsonl")),
    Stage("generate_joined", jobs.GENERATE, _JOINED, ("split", "align"), _generate("test", _aligned), has_sharded(),
          when=_joined),
    Stage("evaluate_bm25", jobs.EVALUATE, ("evaluate",), ("split",), _evaluate(None), has_file("metrics.json")),
    Stage("evaluate_base", jobs.EVALUATE, ("evaluate",), ("generate_base", "tune_repeats", "tune_dev_base"),
          _evaluate(lambda at: at("generate_base"), _greedy_repeats("tune_dev_base")), has_file("metrics.json")),
    Stage("evaluate_best_of_n", jobs.EVALUATE, ("evaluate",), ("select", "tune_repeats"), _evaluate(_selected),
          has_file("metrics.json")),
    Stage("evaluate_aligned", jobs.EVALUATE, ("evaluate",), ("generate_aligned", "tune_repeats", "tune_dev_aligned"),
          _evaluate(lambda at: at("generate_aligned"), _greedy_repeats("tune_dev_aligned")), has_file("metrics.json")),
    Stage("evaluate_joined", jobs.EVALUATE, ("evaluate",), ("generate_joined", "tune_dev_joined"),
          _evaluate(lambda at: at("generate_joined"), _greedy_repeats("tune_dev_joined"), join=True),
          has_file("metrics.json"), when=_joined),
    Stage("score_base", jobs.SCORE, ("score",), ("generate_base", "tune_repeats", "tune_dev_base"),
          _score("generate_base", "test", _greedy_repeats("tune_dev_base")), has_sharded("scored")),
    Stage("score_aligned", jobs.SCORE, ("score",), ("generate_aligned", "tune_repeats", "tune_dev_aligned"),
          _score("generate_aligned", "test", _greedy_repeats("tune_dev_aligned")), has_sharded("scored")),
)


def _check(config, by: dict) -> None:
  if by["generate_train"].prompt.mode != "expansion":
    raise ConfigError(f"aqe: the generate group must use prompt mode 'expansion' (got "
                      f"{by['generate_train'].prompt.mode!r}); e.g. generate.config='generate.py:mode=expansion'")
  task = METHODS[config.method][1]
  if by["align"].task != task:
    raise ConfigError(f"aqe: method={config.method!r} but the align config trains task {by['align'].task!r}; "
                      f"set align.config to configs/{task}.py")
  if "align_rsft" in by and by["align_rsft"].task != "rsft":
    raise ConfigError(f"aqe: method=rsft_then_dpo needs align_rsft.config = configs/rsft.py (it trains task "
                      f"{by['align_rsft'].task!r})")
  if _on_dev(config) and int(by["split"].dev_queries) < 1:
    raise ConfigError("aqe: tune_on_dev needs dev queries: set split.set.dev_queries to how many training "
                      "queries to set apart (e.g. 300)")
  for name in ("generate_base", "generate_aligned"):
    s = by[name].sampling
    if not (s.temperature == 0.0 and s.num_samples == 1 and s.num_beams == 1):
      raise ConfigError(f"aqe: stage {name} must decode greedily (generate_greedy.set: temperature=0, "
                        f"num_samples=1, num_beams=1)")
  if _joined(config):
    if not _on_dev(config):
      raise ConfigError("aqe: test_samples (joined samples) chooses its k on dev queries: set tune_on_dev=True "
                        "and split.set.dev_queries")
    s = by["generate_joined"].sampling
    if s.num_samples != int(config.test_samples) or not s.temperature > 0.0:
      raise ConfigError(f"aqe: test_samples={config.test_samples} needs generate_joined to sample that many "
                        f"(temperature > 0; it has num_samples={s.num_samples}, temperature={s.temperature}): "
                        f"set it as the config argument, configs/aqe.py:...,test_samples={config.test_samples}")


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


def _rewards(workdir: pathlib.Path) -> dict[str, list[float]]:
  return {"unaligned": scored_rewards(workdir / "score_base" / "scored"),
          "aligned": scored_rewards(workdir / "score_aligned" / "scored")}


def _label_args(config, results: dict) -> dict:
  return {"criterion": results["select"].get("criterion", ""), "method": config.method,
          "test_samples": config.get("test_samples", 0)}


def _tables(config, workdir: pathlib.Path, results: dict, metrics: dict) -> list:
  args = _label_args(config, results)
  costs = []
  for s in (s for s in SYSTEMS if s.stage in results):
    c = _cost(results, PAID[s.key], s.stage, s.system, metrics[s.stage])
    costs.append([s.label.format(**args)] + [f"{c[k]:.1f}" if c[k] is not None else "-"
                                             for k in ("expansion_s", "sampling_s", "retrieval_s", "peak_rss_mb")])
  return [{"title": "Test-time cost (each stage in its own process; 2 CPU cores)",
           "note": "expansion s: wall time of the generation stages (process start, model load, sampling; "
                   "best of N adds the filter); sampling s: the jitted sampling alone (compilation included); "
                   "retrieval s: BM25 indexing + search; peak RSS: the largest VmHWM of those processes",
           "columns": ["system", "expansion s", "sampling s", "retrieval s", "peak RSS MiB"], "rows": costs}]


def _repeats_info(config, results: dict) -> str:
  tuned = results.get("tune_repeats")
  reward = _own_reward_repeats(config)
  during = "" if reward is None else f"; the alignment reward searched query x {reward} + expansion"
  if not tuned:
    out = f"{config.get('query_repeats', 1)} (fixed){during}"
  else:
    scores = ", ".join(f"{k}: {v:.4f}" for k, v in tuned.get("by_repeats", {}).items())
    out = (f"{tuned.get('query_repeats')} (tuned on {tuned.get('queries')} training queries, {tuned.get('measure')} "
           f"by k: {scores}; the query alone {tuned.get('query_only', 0.0):.4f}){during}")
  for side in ("base", "aligned", "joined"):
    dev = results.get(f"tune_dev_{side}")
    if dev:
      what = f"{dev.get('join_samples')} aligned samples joined" if side == "joined" else f"greedy {side} expansions"
      out += (f"; {what}: {dev.get('query_repeats')} (tuned on {dev.get('queries')} dev queries, "
              f"{dev.get('by_repeats', {}).get(str(dev.get('query_repeats')), 0.0):.4f} vs the query alone "
              f"{dev.get('query_only', 0.0):.4f})")
  return out


def _samples_info(config, results: dict) -> str:
  """N as configured and the mean number of expansions a training query kept (post-processing drops empties)."""
  sampling = config.generate.get("set", {}).get("sampling", {})
  kept = results["generate_train"].get("records", 0) / max(int(results["split"].get("train_queries") or 1), 1)
  return f"{sampling.get('num_samples', '?')} sampled, {kept:.2f} kept on average"


def _info(config, results: dict) -> dict:
  split = results["split"]
  final = results["align"].get("final", {})
  criterion = results["select"].get("criterion", "")
  return {"recipe": "aqe", "data_dir": split.get("source"), "split": split.get("how"),
          "training queries": split.get("train_queries"), "test queries": split.get("test_queries"),
          "generator": config.generator, "method": config.method,
          "expansions per training query (N)": _samples_info(config, results),
          "expansion records (train)": results["generate_train"].get("records"),
          "preference pairs": results["pairs"].get("pairs"), "RSFT records": results["pairs"].get("rsft"),
          "mean train reward (all / best / chosen / rejected)": [
              results["pairs"].get(k) for k in ("mean_reward", "mean_reward_best_of_n", "mean_reward_chosen",
                                                "mean_reward_rejected")],
          "align final loss": final.get("loss"),
          "query repeats (BM25 over query x k + expansion)": _repeats_info(config, results),
          "best-of-N filter": f"{criterion} over {results['select'].get('mean_candidates')} samples per test query"}


RECIPE = Recipe(name="aqe", title="qgjax AQE recipe report", stages=STAGES, systems=SYSTEMS,
                required=("generator", "method"),
                reward_name=lambda stage_configs: "bm25_rank of the gold document (test, greedy)",
                rewards=_rewards, info=_info, tables=_tables, label_args=_label_args, check=_check,
                isolated=ISOLATED)
