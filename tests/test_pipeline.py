"""`qgjax pipeline --config configs/pipeline.py:tiny` end to end on tiny random models (CLI, one CPU device):
every stage runs once, the report has its rows and columns, a second run skips every stage, and
new settings for a finished stage are refused with an error naming it. The same command on two
processes joined with `jax.distributed` (one CPU device each) gives the same records, metrics and
report as that one-process run (`one_process_run`, shared by both tests)."""

import json
import os

import pytest

from qgjax.config import build_config
from qgjax.errors import ConfigError, QgjaxError
from qgjax import recipes as pipeline
from qgjax.recipes.dpo_qg import STAGES
from pipeline_processes import compare_workdirs, differences, parts_of, run_pipeline, snapshot
from tiny_lm import make_tiny_bert, make_tiny_lm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(REPO, "configs", "pipeline.py") + ":tiny"
ROWS = ["BM25", "MiniLM (base)", "MiniLM + unaligned queries", "MiniLM + aligned queries"]
COLUMNS = ["nDCG@10", "MRR@100", "Recall@100"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline_models")
  return make_tiny_lm(str(root / "tiny_lm")), make_tiny_bert(str(root / "tiny_bert"))


def _overrides(workdir, models):
  return [("workdir", str(workdir)), ("generator", models[0]), ("encoder", models[1])]


@pytest.fixture(scope="module")
def one_process_run(models, tmp_path_factory):
  """The tiny pipeline through the CLI on one process -> (workdir, its result, a snapshot of the
  workdir as that run left it)."""
  root = tmp_path_factory.mktemp("pipeline_one")
  work = root / "pipeline"
  first = run_pipeline(SPEC, _overrides(work, models))
  return work, first, snapshot(work, root / "snapshot")


def test_tiny_pipeline_runs_caches_and_refuses_changed_settings(models, one_process_run):
  work, first, _ = one_process_run
  names = [s.name for s in STAGES if s.when(build_config(SPEC, _overrides(work, models)))]
  assert names[0] == "generate" and len(names) == 16   # the contrastive stages run only when asked for
  assert first["ran"] == names and first["skipped"] == []
  for name in names:
    marker = json.loads((work / name / "STAGE_DONE.json").read_text())
    assert marker["stage"] == name and len(marker["fingerprint"]) == 16 and marker["config"]
    assert marker["attempts"] == 1 and marker["seconds_all_attempts"] >= marker["seconds"] - 0.1
    assert not (work / name / "STAGE_CLOCK.json").exists()

  # the report: four systems x three metrics, in markdown, JSON and a PNG
  paths = first["report"]
  report = json.loads(open(paths["json"]).read())
  assert [s["label"] for s in report["systems"]] == ROWS
  assert [s["key"] for s in report["systems"]] == ["bm25", "base", "unaligned", "aligned"]
  assert [m["label"] for m in report["measures"]] == COLUMNS
  for s in report["systems"]:
    assert all(0.0 <= v <= 1.0 for v in s["metrics"].values()) and len(s["metrics"]) == 3
  # every number in the table is ir_measures' (pytrec_eval) on that system's run file
  import glob

  import ir_measures

  from qgjax.data.beir import load_qrels
  from qgjax.evaluation.ir_metrics import read_trec_run
  for s in report["systems"]:
    ev = json.loads((work / f"evaluate_{s['key']}" / "metrics.json").read_text())
    (run_file,) = glob.glob(str(work / f"evaluate_{s['key']}" / "run.*.trec"))
    run = read_trec_run(run_file)
    qrels = load_qrels(os.path.join(ev["data_dir"], "qrels", f"{ev['split']}.tsv"))
    qrels = {q: r for q, r in qrels.items() if q in run}
    assert len(run) == ev["num_queries"] == len(qrels) > 0
    ref = ir_measures.pytrec_eval.calc_aggregate([ir_measures.parse_measure(m) for m in s["metrics"]], qrels, run)
    for m, v in s["metrics"].items():
      assert v == pytest.approx(ref[ir_measures.parse_measure(m)], abs=1e-9), (s["key"], m)
  # the alignment's held-out pairs by step, and each generator's retention, as the stages recorded them
  tables = {t["title"].split(":")[0].split(" (")[0]: t for t in report["tables"]}
  evals = [r for r in map(json.loads, (work / "align" / "metrics.jsonl").read_text().splitlines())
           if "eval/rewards/accuracy" in r]
  assert [row[:2] for row in tables["Alignment"]["rows"]] == [[r["step"], f"{r['eval/rewards/accuracy']:.3f}"]
                                                             for r in evals] and evals
  retention = tables["Retention of the source document"]["rows"]
  for which, row in zip(("unaligned", "aligned"), retention):
    scored = json.loads((work / f"score_{which}" / "STAGE_DONE.json").read_text())["result"]
    assert row[1:] == ["bm25", scored["records"]] + [f"{scored['retention']['bm25'][f'retention@{k}']:.4f}"
                                                     for k in (1, 10, 100)]
  md = open(paths["markdown"]).read()
  assert "## Alignment: DPO on held-out pairs, by step" in md
  assert "| system | nDCG@10 | MRR@100 | Recall@100 |" in md
  assert all(f"| {row} | " in md for row in ROWS)
  with open(paths["png"], "rb") as f:
    png = f.read()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
  # rewards: one scored query per document at most, for both generators; bm25_rank rewards are -rank
  stats = report["reward"]["stats"]
  assert set(stats) == {"unaligned", "aligned"} and report["reward"]["name"] == "bm25_rank"
  assert all(0 < st["count"] <= 52 and st["max"] <= -1 for st in stats.values())
  # score, mine and evaluate stages share one corpus-embedding store per (model, length): the base
  # encoder encodes the corpus once for both mine stages and evaluate_base (mine's max_len 128 and
  # evaluate's 256 both cut at the tiny model's max_seq_length, 128)
  shared = work.resolve() / "cache" / "embeddings"
  for name in ("score", "score_unaligned", "score_aligned", "evaluate_base", "evaluate_aligned"):
    marker = json.loads((work / name / "STAGE_DONE.json").read_text())
    assert marker["config"]["dense"]["cache_dir"] == str(shared)
  for name in ("mine_unaligned", "mine_aligned"):
    assert json.loads((work / name / "STAGE_DONE.json").read_text())["config"]["encoder"]["cache_dir"] == str(shared)
    assert not (work / name / "embeddings").exists()
  stores = sorted((json.loads((d / "manifest.json").read_text())["meta"]["model"],
                   json.loads((d / "manifest.json").read_text())["meta"]["max_len"]) for d in shared.iterdir())
  exports = sorted(str(work.resolve() / f"retriever_{k}" / "export") for k in ("aligned", "unaligned"))
  assert stores == sorted([(models[1], 128)] + [(e, 128) for e in exports]), stores
  # training saw the corpus only; evaluation the demo's judged test queries
  assert first["stages"] == {n: "ran" for n in names}

  # the same run again (in this process): every stage is skipped, the report is rewritten
  again = json.loads(json.dumps(pipeline.run(build_config(SPEC, _overrides(work, models))), default=str))
  assert again["ran"] == [] and again["skipped"] == names
  assert again["systems"] == first["systems"]

  # the workdir copied elsewhere keeps every finished stage (paths under it compare as paths under the copy)
  import shutil
  copy = work.parent / "pipeline-copy"
  shutil.copytree(work, copy, symlinks=True)
  moved = json.loads(json.dumps(pipeline.run(build_config(SPEC, _overrides(copy, models))), default=str))
  assert moved["ran"] == [] and moved["skipped"] == names and moved["systems"] == first["systems"]
  shutil.rmtree(copy)
  # carried without its trained models and caches (tools/carry_workdir.py): no model is trained again
  # while every stage that reads it has finished; a stage that reads one and must run again trains it first
  import sys
  sys.path.insert(0, os.path.join(REPO, "tools"))
  from carry_workdir import carry
  carried = carry(str(work), str(copy))
  assert sorted(carried["left_out"]) == ["align/checkpoints", "align/export", "cache", "retriever_aligned/checkpoints",
                                         "retriever_aligned/export", "retriever_unaligned/checkpoints",
                                         "retriever_unaligned/export"]
  pruned = json.loads(json.dumps(pipeline.run(build_config(SPEC, _overrides(copy, models))), default=str))
  assert pruned["ran"] == [] and pruned["skipped"] == names and pruned["systems"] == first["systems"]
  shutil.rmtree(copy / "generate_aligned")
  again = pipeline.run(build_config(SPEC, _overrides(copy, models)))
  assert again["ran"] == ["align", "generate_aligned"] and (copy / "align" / "export").is_dir()
  assert not (copy / "retriever_aligned" / "export").exists()
  shutil.rmtree(copy)

  # killed after a stage's work but before its marker, or its output lost: only that stage runs again
  (work / "evaluate_bm25" / "STAGE_DONE.json").unlink()
  assert pipeline.run(build_config(SPEC, _overrides(work, models)))["ran"] == ["evaluate_bm25"]
  (work / "evaluate_bm25" / "metrics.json").unlink()
  out = pipeline.run(build_config(SPEC, _overrides(work, models)))
  assert out["ran"] == ["evaluate_bm25"] and out["systems"] == first["systems"]

  # other settings for a finished stage: a clear error naming the stage and the key, nothing re-run
  changed = build_config(SPEC, _overrides(work, models) + [("pairs.set.max_pairs_per_doc", "3")])
  with pytest.raises(QgjaxError, match=r"pipeline stage 'pairs' already finished .*max_pairs_per_doc.*align"):
    pipeline.run(changed)
  # a key the pipeline wires itself is refused before anything runs
  wired = build_config(SPEC, _overrides(work, models))
  wired.score.set.workdir = "elsewhere"
  with pytest.raises(ConfigError, match=r"score.set.workdir.*wired by the pipeline"):
    pipeline.run(wired)


def test_equal_budget_adds_the_aligned_retriever_on_as_many_tuples_as_the_unaligned(models, one_process_run):
  """equal_budget=True on a finished run (a copy of it): only the two new stages run; the third
  retriever trains on a seeded subset of the aligned tuples as large as the unaligned ones, and the
  report gains its row."""
  import shutil

  work, first, _ = one_process_run
  copy = work.parent / "pipeline-equal"
  shutil.copytree(work, copy, symlinks=True)
  out = json.loads(json.dumps(pipeline.run(build_config(SPEC, _overrides(copy, models) + [("equal_budget", "True")])),
                              default=str))
  assert out["ran"] == ["retriever_aligned_equal", "evaluate_aligned_equal"]
  assert list(out["systems"]) == ["bm25", "base", "unaligned", "aligned", "aligned_equal"]
  assert {k: v for k, v in out["systems"].items() if k != "aligned_equal"} == first["systems"]
  seen = {k: json.loads((copy / f"retriever_{k}" / "STAGE_DONE.json").read_text())["result"]
          for k in ("unaligned", "aligned", "aligned_equal")}
  assert seen["aligned_equal"]["train_examples"] == min(seen["unaligned"]["train_examples"],
                                                       seen["aligned"]["train_examples"]) > 0
  config = json.loads((copy / "retriever_aligned_equal" / "STAGE_DONE.json").read_text())["config"]
  assert config["data"]["max_examples_like"] == str(copy.resolve() / "mine_unaligned" / "tuples")
  assert config["data"]["train"] == str(copy.resolve() / "mine_aligned" / "tuples")
  md = open(out["report"]["markdown"]).read()
  assert "| MiniLM + aligned queries, as many as unaligned | " in md
  shutil.rmtree(copy)


def test_two_processes_give_the_one_process_outputs(models, one_process_run, tmp_path):
  """Two processes split each stage (generate round-robin, score and mine by contiguous blocks,
  every process's part in <stage>/.../process-<i>); read as one output, every stage's records
  equal the one-process run's in order, and so do pairs, training metrics, evaluate metrics and
  the report (floats to 1e-5)."""
  import time

  work, first, one = one_process_run
  two = tmp_path / "pipeline"
  t0 = time.perf_counter()
  result = run_pipeline(SPEC, _overrides(two, models), processes=2)
  seconds = time.perf_counter() - t0
  assert result["ran"] == first["ran"] and not differences(first["systems"], result["systems"])
  for rel in ("generate", "score/scored", "mine_aligned/tuples", "score_unaligned/scored"):
    counts = parts_of(two, rel)
    assert len(counts) == 2 and min(counts) > 0, (rel, counts)   # both processes wrote a part
  covered = compare_workdirs(one, str(work), two, str(two))
  assert covered["generate"] >= 52 and covered["pairs/pairs.jsonl"] > 0 and covered["align/metrics.jsonl"] > 0
  assert {"mine_unaligned/tuples", "evaluate_aligned/metrics.json", "retriever_aligned/metrics.jsonl"} <= set(covered)
  print(f"2 processes: {seconds:.1f} s; compared {covered}")


def test_stage_marker_new_keys_are_compatible_changed_keys_are_not(tmp_path):
  from qgjax.pipeline import markers as cache

  old = {"a": 1, "g": {"x": "q"}}
  cache.write_marker("score", tmp_path, "score", old, {"generate": "f0"}, "fp-old", {"records": 3}, 1.0)
  marker = cache.read_marker(tmp_path)
  assert marker["result"] == {"records": 3} and marker["needs"] == {"generate": "f0"}
  new_key = {"a": 1, "g": {"x": "q", "y": None}}   # a newer config file added g.y
  fp = cache.fingerprint(new_key, {"generate": "f0"})
  assert cache.check_marker("score", tmp_path, [], marker, new_key, {"generate": "f0"}, fp) == "fp-old"
  # with the config file's defaults known: compatible while the new key keeps its default, refused when
  # set to another value (the stage never ran with it: e.g. a new split option)
  defaults = {"a": 0, "g": {"x": "", "y": None}}
  assert cache.check_marker("score", tmp_path, [], marker, new_key, {"generate": "f0"}, fp, defaults) == "fp-old"
  with pytest.raises(QgjaxError, match=r"g\.y \(a key newer than the stage, set to a value other than its default\)"):
    cache.check_marker("score", tmp_path, [], marker, {"a": 1, "g": {"x": "q", "y": 3}}, {"generate": "f0"}, "fp-y",
                       defaults)
  with pytest.raises(QgjaxError, match=r"stage 'score'.*\(g\.x changed\).*stages after it \(pairs\)"):
    changed = {"a": 1, "g": {"x": "other"}}
    cache.check_marker("score", tmp_path, ["pairs"], marker, changed, {"generate": "f0"}, "fp-new")
  with pytest.raises(QgjaxError, match=r"input from stage 'generate' changed"):
    cache.check_marker("score", tmp_path, [], marker, old, {"generate": "f1"}, "fp-new")
  # where a cache lives changes no result: a moved cache_dir is compatible, other changes beside it are not
  cache.write_marker("score", tmp_path, "score", {"a": 1, "dense": {"cache_dir": ""}}, {}, "fp-c", {}, 1.0)
  marker = cache.read_marker(tmp_path)
  moved = {"a": 1, "dense": {"cache_dir": "runs/cache"}}
  assert cache.check_marker("score", tmp_path, [], marker, moved, {}, "fp-moved") == "fp-c"
  with pytest.raises(QgjaxError, match=r"\(a changed\)"):
    cache.check_marker("score", tmp_path, [], marker, {"a": 2, "dense": {"cache_dir": "x"}}, {}, "fp-x")
  # nor does computing the prompts' common start once (a newer default turned it on for DPO)
  cache.write_marker("align", tmp_path, "train", {"dpo": {"beta": 0.1, "share_prompt_prefix": False}}, {}, "fp-d", {}, 1.0)
  marker = cache.read_marker(tmp_path)
  on = {"dpo": {"beta": 0.1, "share_prompt_prefix": True}}
  assert cache.check_marker("align", tmp_path, [], marker, on, {}, "fp-on") == "fp-d"


def test_stage_marker_of_a_moved_workdir_compares_paths_under_the_new_one(tmp_path):
  from qgjax.pipeline import markers as cache

  def config(root):
    return {"output_dir": str(root / "generate"), "model": {"name": str(root / "align" / "export")},
            "data": {"corpus": "/collections/nfcorpus"}, "buckets": [128, 256]}
  old, new = tmp_path / "a" / "run", tmp_path / "b" / "copy"
  cache.write_marker("generate", old / "generate", "generate", config(old), {"align": "f-al"}, "fp-a", {}, 1.0)
  marker = cache.read_marker(old / "generate")
  assert marker["workdir"] == str(old)
  assert cache.check_marker("generate", new / "generate", [], marker, config(new), {"align": "f-al"}, "fp-b") == "fp-a"
  del marker["workdir"]   # a marker written before the field: the workdir is the parent of the stage's own path
  assert cache.check_marker("generate", new / "generate", [], marker, config(new), {"align": "f-al"}, "fp-b") == "fp-a"
  other = dict(config(new), data={"corpus": "/collections/scifact"})   # a path outside the workdir is a setting
  with pytest.raises(QgjaxError, match=r"\(data\.corpus changed\)"):
    cache.check_marker("generate", new / "generate", [], marker, other, {"align": "f-al"}, "fp-c")
  elsewhere = dict(config(new), model={"name": str(tmp_path / "c" / "align" / "export")})
  with pytest.raises(QgjaxError, match=r"\(model\.name changed\)"):
    cache.check_marker("generate", new / "generate", [], marker, elsewhere, {"align": "f-al"}, "fp-d")


def test_pending_stages_skip_a_deleted_model_nothing_still_to_run_reads(tmp_path):
  from qgjax.pipeline.runner import pending_stages
  from qgjax.pipeline.stage import Stage, has_export, has_file

  wire = lambda p, at: {}
  train = Stage("train", "job", ("g",), (), wire, has_export())
  use = Stage("use", "job", ("g",), ("train",), wire, has_file("out.txt"))
  report = Stage("report", "job", ("g",), ("use",), wire, has_file("out.txt"))
  stages = [train, use, report]
  assert train.intermediate and not use.intermediate
  assert pending_stages(tmp_path, stages) == {"train", "use", "report"}       # nothing has run
  for s in stages:
    (tmp_path / s.name).mkdir()
    (tmp_path / s.name / "STAGE_DONE.json").write_text("{}")
  (tmp_path / "use" / "out.txt").write_text("x")
  (tmp_path / "report" / "out.txt").write_text("x")
  assert pending_stages(tmp_path, stages) == set()        # train's export is gone, its reader is done
  (tmp_path / "report" / "out.txt").unlink()
  assert pending_stages(tmp_path, stages) == {"report"}   # a lost output that is not a model runs again
  (tmp_path / "use" / "out.txt").unlink()
  assert pending_stages(tmp_path, stages) == {"train", "use", "report"}   # its reader runs: train again
  (tmp_path / "use" / "STAGE_DONE.json").unlink()
  (tmp_path / "use" / "out.txt").write_text("x")
  assert pending_stages(tmp_path, stages) == {"train", "use", "report"}   # no marker: runs, reads train
