"""`qgjax pipeline` recipes on tiny random models (CLI, one CPU device): AQE (configs/aqe.py:tiny) and
ReadQG (configs/readqg_recipe.py:tiny). Structure and invariants only, never quality. Each recipe
also runs on two processes joined with `jax.distributed` (one CPU device each) and gives the
one-process run's records, metrics and report (that run shared by both tests: `aqe_run`, `readqg_run`);
the ReadQG recipe on a gs:// workdir (fake-gcs-server) gives that run's outputs too."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from qgjax.config import build_config
from qgjax.errors import QgjaxError
from qgjax import recipes as pipeline
from pipeline_processes import compare_workdirs, parts_of, run_pipeline, snapshot
import test_object_storage as object_storage
from tiny_lm import make_tiny_bert, make_tiny_lm
from xla_flags import cpu_devices

gcs = object_storage.gcs   # the fake-gcs-server fixture (its own server for this module)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  root = tmp_path_factory.mktemp("recipe_models")
  return make_tiny_lm(str(root / "tiny_lm")), make_tiny_bert(str(root / "tiny_bert"))


def _cli(spec: str, overrides: list[tuple[str, str]]) -> dict:
  env = dict(os.environ, XLA_FLAGS=cpu_devices(1), JAX_PLATFORMS="cpu",
             QGJAX_PROGRESS="0")
  cmd = [sys.executable, "-m", "qgjax.cli", "pipeline", "--config", spec] + [f"--config.{k}={v}" for k, v in overrides]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = proc.stdout.splitlines()
  start = max(i for i, line in enumerate(lines) if line == "{")
  return json.loads("\n".join(lines[start:]))


def _in_process(spec: str, overrides: list[tuple[str, str]]) -> dict:
  """The same pipeline run in this process -> its result as the CLI would print it (JSON round trip)."""
  return json.loads(json.dumps(pipeline.run(build_config(spec, overrides)), default=str))


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _records(out_dir):
  from qgjax.data.sharded_writer import iter_sharded
  return list(iter_sharded(out_dir, require_complete=True))


# ---------------------------------------------------------------------------------------------
# AQE

def test_select_criteria():
  from qgjax.methods.aqe.select import consensus_scores, likelihood_scores

  s = consensus_scores(["heart disease diet", "diet for heart disease", "football scores"])
  assert s[0] == s[1] > s[2] == pytest.approx(0.0)
  assert consensus_scores(["alone"]) == [0.0]
  assert likelihood_scores([{"logprob": -4.0, "num_tokens": 2}, {"logprob": -3.0, "num_tokens": 1}]) == [-2.0, -3.0]


def test_aqe_methods_wire_their_align_stages(models, tmp_path):
  """rsft_then_dpo adds align_rsft (RSFT on rsft.jsonl) and starts DPO from its export (DPO's reference
  is the model it starts from); the other methods align the generator itself in one stage."""
  from qgjax.pipeline.runner import stage_configs
  from qgjax.recipes.aqe import STAGES

  for method, task, train in (("dpo", "dpo", "pairs.jsonl"), ("rsft", "rsft", "rsft.jsonl"),
                              ("rsft_dpo", "rsft_dpo", "pairs.jsonl"), ("rsft_then_dpo", "dpo", "pairs.jsonl")):
    spec = os.path.join(REPO, "configs", "aqe.py") + f":tiny,method={method}"
    work = tmp_path / method
    _, configs = stage_configs(build_config(spec, [("workdir", str(work)), ("generator", models[0])]), STAGES)
    by = {s.name: c for s, c in configs}
    assert (by["align"].task, os.path.basename(by["align"].data.train)) == (task, train)
    if method == "rsft_then_dpo":
      assert (by["align_rsft"].task, os.path.basename(by["align_rsft"].data.train)) == ("rsft", "rsft.jsonl")
      assert by["align_rsft"].model.name == models[0]
      assert by["align"].model.name == str(work / "align_rsft" / "export")
      assert by["align"].dpo.reference == "precomputed"   # reference log-probs of the model it starts from
    else:
      assert "align_rsft" not in by and by["align"].model.name == models[0]


def test_until_stops_after_the_named_stage(models, tmp_path):
  """config.until runs the stages up to the named one (here: the training expansions and the tuned
  query weight) and writes no report; the same command without it goes on from there."""
  from qgjax.errors import ConfigError

  spec = os.path.join(REPO, "configs", "aqe.py") + ":tiny"
  over = [("workdir", str(tmp_path)), ("generator", models[0])]
  out = _in_process(spec, over + [("until", "tune_repeats")])
  assert out["ran"] == ["split", "generate_train", "tune_repeats"] and out["stopped_after"] == "tune_repeats"
  assert (tmp_path / "tune_repeats" / "repeats.json").is_file() and not (tmp_path / "report").exists()
  assert not (tmp_path / "score_train").exists()
  with pytest.raises(ConfigError, match=r"config.until='tune' is not a stage of this run; its stages: split, "):
    pipeline.run(build_config(spec, over + [("until", "tune")]))


def test_aqe_query_repeats_tuned_or_fixed(models, tmp_path):
  """query_repeats="tune" (the default) runs tune_repeats and points every BM25-over-expansion stage at its
  file; an integer skips it and sets the count itself; anything else is a config error.
  reward_query_repeats sets the alignment reward's count alone."""
  from qgjax.errors import ConfigError
  from qgjax.pipeline.runner import stage_configs
  from qgjax.recipes.aqe import STAGES

  spec = os.path.join(REPO, "configs", "aqe.py") + ":tiny"
  readers = ("score_train", "score_base", "score_aligned", "evaluate_base", "evaluate_best_of_n", "evaluate_aligned")
  base = [("workdir", str(tmp_path)), ("generator", models[0])]
  by = {s.name: c for s, c in stage_configs(build_config(spec, base), STAGES)[1]}
  assert by["tune_repeats"].input == str(tmp_path / "generate_train") and by["tune_repeats"].split == "train"
  for name in readers:
    assert by[name].aqe.query_repeats_file == str(tmp_path / "tune_repeats" / "repeats.json"), name
  by = {s.name: c for s, c in stage_configs(build_config(spec, base + [("query_repeats", "4")]), STAGES)[1]}
  assert "tune_repeats" not in by
  assert all(by[n].aqe.query_repeats == 4 and not by[n].aqe.query_repeats_file for n in readers)
  with pytest.raises(ConfigError, match="query_repeats must be 'tune' or an integer >= 1; got 0"):
    stage_configs(build_config(spec, base + [("query_repeats", "0")]), STAGES)
  # the alignment reward at its own k (score_train only); every test-time search keeps the tuned k
  by = {s.name: c for s, c in stage_configs(build_config(spec, base + [("reward_query_repeats", "1")]), STAGES)[1]}
  assert by["score_train"].aqe.query_repeats == 1 and not by["score_train"].aqe.query_repeats_file
  for name in readers[1:]:
    assert by[name].aqe.query_repeats_file == str(tmp_path / "tune_repeats" / "repeats.json"), name
  with pytest.raises(ConfigError, match="reward_query_repeats must be 'same' or an integer >= 1; got 'x'"):
    stage_configs(build_config(spec, base + [("reward_query_repeats", "x")]), STAGES)


AQE_SPEC = os.path.join(REPO, "configs", "aqe.py") + ":tiny,method=rsft_then_dpo"
READQG_SPEC = os.path.join(REPO, "configs", "readqg_recipe.py") + ":tiny"


def _aqe_overrides(work, models):
  return [("workdir", str(work)), ("generator", models[0])]


def _readqg_overrides(work, models):
  return [("workdir", str(work)), ("encoder", models[1])]


def _one_process_run(spec, overrides, root):
  """The recipe through the CLI on one process -> (workdir, its result, a snapshot of the workdir
  as that run left it, before a test changes it)."""
  work = root / "work"
  first = run_pipeline(spec, overrides(work))
  return work, first, snapshot(work, root / "snapshot")


@pytest.fixture(scope="module")
def aqe_run(models, tmp_path_factory):
  return _one_process_run(AQE_SPEC, lambda w: _aqe_overrides(w, models), tmp_path_factory.mktemp("aqe_one"))


@pytest.fixture(scope="module")
def readqg_run(models, tmp_path_factory):
  return _one_process_run(READQG_SPEC, lambda w: _readqg_overrides(w, models), tmp_path_factory.mktemp("readqg_one"))


def _two_processes_equal_one(spec, overrides, one_run, two: pathlib.Path, split: tuple[str, ...]) -> dict:
  """The recipe on two processes: every stage's records (read as one output, in order), the jsonl
  files, training and evaluate metrics and the report equal the one-process run's (floats to
  1e-5); each output in `split` has a non-empty part from each process -> what was compared."""
  import time

  work, first, one = one_run
  t0 = time.perf_counter()
  result = run_pipeline(spec, overrides(two), processes=2)
  seconds = time.perf_counter() - t0
  assert result["ran"] == first["ran"]
  for rel in split:
    counts = parts_of(two, rel)
    assert len(counts) == 2 and min(counts) > 0, (rel, counts)
  covered = compare_workdirs(one, str(work), two, str(two))
  print(f"2 processes: {seconds:.1f} s; compared {covered}")
  return covered


def test_tiny_aqe_recipe(models, aqe_run):
  """The tiny AQE recipe with method=rsft_then_dpo through the CLI (RSFT, then DPO from the RSFT weights)."""
  from qgjax.recipes.aqe import STAGES

  spec = AQE_SPEC
  work, first, _ = aqe_run
  over = _aqe_overrides(work, models)
  names = [s.name for s in STAGES if s.when(build_config(spec, over))]
  assert first["ran"] == names and first["skipped"] == [] and "tune_dev_aligned" not in names
  rsft = json.loads((work / "align_rsft" / "STAGE_DONE.json").read_text())
  dpo = json.loads((work / "align" / "STAGE_DONE.json").read_text())
  assert rsft["config"]["task"] == "rsft" and rsft["result"]["steps"] == 4
  assert dpo["config"]["task"] == "dpo" and dpo["config"]["model"]["name"] == str(work / "align_rsft" / "export")
  assert set(dpo["needs"]) == {"pairs", "align_rsft"}

  # split: disjoint training / test halves of the demo's judged queries, each with its qrels
  data = work / "split" / "data"
  train = {q["_id"] for q in _jsonl(data / "queries_train.jsonl")}
  test = {q["_id"] for q in _jsonl(data / "queries_test.jsonl")}
  assert train and test and not train & test
  with open(data / "qrels" / "test.tsv") as f:
    assert {line.split("\t")[0] for line in list(f)[1:]} == test
  # N sampled expansions per training query, each scored by the gold document's BM25 rank
  scored = _records(work / "score_train" / "scored")
  assert {r["query_id"] for r in scored} <= train and all(r["sample_idx"] < 4 for r in scored)
  assert all(r["reward"] <= -1 and r["query"] and "expansion" in r for r in scored)
  # best vs worst: one pair per query at most, chosen strictly better
  pairs = _jsonl(work / "pairs" / "pairs.jsonl")
  assert pairs and len({p["query_id"] for p in pairs}) == len(pairs)
  assert all(p["reward_chosen"] > p["reward_rejected"] and p["source_query"] for p in pairs)
  # test time: one greedy expansion per test query; best of N keeps one of the sampled ones
  for stage in ("generate_base", "generate_aligned"):
    recs = _records(work / stage)
    assert {r["query_id"] for r in recs} <= test and all(r["sample_idx"] == 0 for r in recs)
  sampled = {(r["query_id"], r["expansion"]) for r in _records(work / "generate_sampled")}
  selected = _jsonl(work / "select" / "selected.jsonl")
  assert selected and all((r["query_id"], r["expansion"]) in sampled and r["criterion"] == "consensus"
                          for r in selected)

  # the aligned system is BM25 over "query expansion" with each test query's own greedy expansion,
  # and its metrics are ir_measures' on that run file
  from qgjax.data.beir import Corpus, load_qrels
  from qgjax.evaluation.ir_metrics import read_trec_run
  from qgjax.retrieval.bm25 import open_bm25_from_config
  ir_measures = pytest.importorskip("ir_measures")
  ev = json.loads((work / "evaluate_aligned" / "metrics.json").read_text())
  run = read_trec_run(work / "evaluate_aligned" / "run.aqe.trec")
  texts = {q["_id"]: q["text"] for q in _jsonl(data / "queries_test.jsonl")}
  expansion = {r["query_id"]: r["expansion"] for r in _records(work / "generate_aligned")}
  qids = sorted(run)
  assert qids == sorted(texts) and set(expansion) <= set(texts)
  import ml_collections
  bm25 = open_bm25_from_config(Corpus(data / "corpus.jsonl"), ml_collections.ConfigDict(ev["config"]["bm25"]))
  # tune_repeats chose how often the query comes before its expansion, on the training queries only
  tuned = json.loads((work / "tune_repeats" / "repeats.json").read_text())
  k = tuned["query_repeats"]
  assert tuned["candidates"] == [1, 2, 3] and set(tuned["by_repeats"]) == {"1", "2", "3"}
  assert tuned["by_repeats"][str(k)] == max(tuned["by_repeats"].values()) and tuned["queries"] == len(train)
  assert json.loads((work / "score_train" / "scored" / "manifest.json").read_text()
                    )["meta"]["settings"]["aqe"] == {"query_repeats": k}
  ref = bm25.search([" ".join([texts[q]] * k + [expansion[q]]) if q in expansion else texts[q] for q in qids],
                    k=10).as_run(qids)
  for q in qids:
    top = sorted(run[q], key=lambda d: (-run[q][d], d))[:10]
    assert [round(run[q][d], 4) for d in top] == [round(v, 4) for v in sorted(ref[q].values(), reverse=True)], q
  qrels = load_qrels(data / "qrels" / "test.tsv")
  got = ir_measures.calc_aggregate([ir_measures.nDCG @ 10, ir_measures.R @ 100, ir_measures.Success @ 1], qrels, run)
  for name, m in (("nDCG@10", ir_measures.nDCG @ 10), ("R@100", ir_measures.R @ 100), ("Success@1", ir_measures.Success @ 1)):
    assert ev["systems"]["aqe"][name] == pytest.approx(got[m], abs=1e-9)

  report = json.loads(open(first["report"]["json"]).read())
  assert [s["key"] for s in report["systems"]] == ["bm25", "base", "best_of_n", "aligned"]
  aligned = next(s for s in report["systems"] if s["key"] == "aligned")
  assert aligned["metrics"]["nDCG@10"] == pytest.approx(ev["systems"]["aqe"]["nDCG@10"], abs=1e-9)
  assert [m["label"] for m in report["measures"]] == ["nDCG@10", "Recall@100", "Top-1 acc", "Top-5 acc",
                                                      "Top-20 acc"]
  for s in report["systems"]:
    assert all(0.0 <= v <= 1.0 for v in s["metrics"].values())
    top = [s["metrics"][f"Success@{k}"] for k in (1, 5, 20)]
    assert top == sorted(top)  # top-k accuracy cannot fall as k grows
  cost = report["tables"][0]
  assert cost["columns"] == ["system", "expansion s", "sampling s", "retrieval s", "peak RSS MiB"]
  assert [row[0] for row in cost["rows"]] == [s["label"] for s in report["systems"]]
  assert float(cost["rows"][0][1]) == 0.0 and all(float(row[1]) > 0 for row in cost["rows"][1:])
  assert all(50.0 < float(row[4]) < 8000.0 for row in cost["rows"])
  assert set(report["reward"]["stats"]) == {"unaligned", "aligned"}
  assert all(st["max"] <= -1 and 0 < st["count"] <= len(test) for st in report["reward"]["stats"].values())
  md = open(first["report"]["markdown"]).read()
  assert "## Test-time cost" in md and "| BM25 (query only) |" in md
  kept = len(_records(work / "generate_train")) / len(train)   # empty expansions are dropped, so N or fewer
  assert report["info"]["expansions per training query (N)"] == f"4 sampled, {kept:.2f} kept on average"

  again = _in_process(spec, over)   # in this process: a second interpreter would only re-import jax
  assert again["ran"] == [] and again["skipped"] == names and again["systems"] == first["systems"]
  changed = build_config(spec, over + [("select.set.criterion", "likelihood")])
  with pytest.raises(QgjaxError, match=r"pipeline stage 'select' already finished .*criterion.*evaluate_best_of_n"):
    pipeline.run(changed)


def test_aqe_tunes_each_greedy_generators_query_weight_on_dev_queries(models, aqe_run, tmp_path):
  """tune_on_dev with split.set.dev_queries: dev queries set apart from training, one greedy expansion
  each from the base and the aligned generator, each generator's k chosen on them, and its test-time
  search (evaluate_*, score_*) uses that k; best of N keeps tune_repeats' k. A finished split made
  without dev queries is refused; without dev queries tune_on_dev is a config error."""
  import shutil

  from qgjax.errors import ConfigError
  from qgjax.pipeline.runner import stage_configs
  from qgjax.recipes.aqe import STAGES

  dev = [("tune_on_dev", "True"), ("split.set.dev_queries", "3")]
  with pytest.raises(ConfigError, match="tune_on_dev needs dev queries"):
    pipeline.run(build_config(AQE_SPEC, _aqe_overrides(tmp_path / "x", models) + dev[:1]))
  work, _, _ = aqe_run
  copy = tmp_path / "copy"
  shutil.copytree(work, copy, symlinks=True)
  with pytest.raises(QgjaxError, match=r"stage 'split' already finished .*dev_queries"):
    pipeline.run(build_config(AQE_SPEC, _aqe_overrides(copy, models) + dev))
  joined_spec = AQE_SPEC + ",test_samples=2"   # + each dev / test query's 2 aligned samples joined
  with pytest.raises(ConfigError, match="test_samples .*tune_on_dev"):
    pipeline.run(build_config(joined_spec, _aqe_overrides(tmp_path / "x", models)))
  with pytest.raises(ConfigError, match="test_samples=3 needs generate_joined to sample that many"):
    pipeline.run(build_config(joined_spec, _aqe_overrides(tmp_path / "x", models) + dev + [("test_samples", "3")]))
  w = tmp_path / "dev"
  out = run_pipeline(joined_spec, _aqe_overrides(w, models) + dev)   # the CLI, one process
  data = w / "split" / "data"
  train, devq = ({q["_id"] for q in _jsonl(data / f"queries_{side}.jsonl")} for side in ("train", "dev"))
  assert len(devq) == 3 and not train & devq
  assert {r["query_id"] for r in _records(w / "generate_train")} <= train
  for side in ("base", "aligned"):
    recs = _records(w / f"generate_dev_{side}")
    assert {r["query_id"] for r in recs} <= devq and all(r["sample_idx"] == 0 for r in recs)
    tuned = json.loads((w / f"tune_dev_{side}" / "repeats.json").read_text())
    assert tuned["queries"] == len({r["query_id"] for r in recs}) and tuned["samples_per_query"] == 1
    for stage in (f"evaluate_{side}", f"score_{side}"):
      cfg = json.loads((w / stage / "STAGE_DONE.json").read_text())["config"]
      assert cfg["aqe"]["query_repeats_file"] == str(w.resolve() / f"tune_dev_{side}" / "repeats.json"), stage
  best = json.loads((w / "evaluate_best_of_n" / "STAGE_DONE.json").read_text())["config"]
  assert best["aqe"]["query_repeats_file"] == str(w.resolve() / "tune_repeats" / "repeats.json")
  assert "dev queries" in open(out["report"]["markdown"]).read()
  by = {s.name: c for s, c in stage_configs(build_config(joined_spec, _aqe_overrides(w, models) + dev), STAGES)[1]}
  assert by["generate_dev_aligned"].model.name == str(w / "align" / "export") and by["tune_dev_base"].split == "dev"
  assert by["generate_joined"].model.name == str(w / "align" / "export") and by["generate_joined"].sampling.num_samples == 2

  # joined: 2 sampled expansions per dev / test query from the aligned generator; k chosen on dev for
  # the joined text; evaluate_joined's run is BM25 over query x k + the two samples joined in sample order
  from qgjax.data.beir import Corpus
  from qgjax.evaluation.ir_metrics import read_trec_run
  from qgjax.retrieval.bm25 import open_bm25_from_config
  import ml_collections
  test = {q["_id"]: q["text"] for q in _jsonl(data / "queries_test.jsonl")}
  for stage, ids in (("generate_dev_joined", devq), ("generate_joined", set(test))):
    recs = _records(w / stage)
    assert {r["query_id"] for r in recs} <= ids and {r["sample_idx"] for r in recs} == {0, 1}, stage
  tuned = json.loads((w / "tune_dev_joined" / "repeats.json").read_text())
  assert tuned["join_samples"] == 2 and tuned["candidates"] == [1, 2, 4] and tuned["queries"] == len(
      {r["query_id"] for r in _records(w / "generate_dev_joined")})
  k = tuned["query_repeats"]
  ev = json.loads((w / "evaluate_joined" / "STAGE_DONE.json").read_text())["config"]
  assert ev["aqe"]["join_samples"] == 2 and ev["aqe"]["query_repeats_file"] == str(w.resolve() / "tune_dev_joined" / "repeats.json")
  samples: dict = {}
  for r in sorted(_records(w / "generate_joined"), key=lambda r: r["sample_idx"]):
    samples.setdefault(r["query_id"], []).append(r["expansion"])
  run = read_trec_run(w / "evaluate_joined" / "run.aqe.trec")
  qids = sorted(run)
  bm25 = open_bm25_from_config(Corpus(data / "corpus.jsonl"), ml_collections.ConfigDict(ev["bm25"]))
  ref = bm25.search([" ".join([test[q]] * k + samples[q]) if q in samples else test[q] for q in qids],
                    k=10).as_run(qids)
  for q in qids:
    top = sorted(run[q], key=lambda d: (-run[q][d], d))[:10]
    assert [round(run[q][d], 4) for d in top] == [round(v, 4) for v in sorted(ref[q].values(), reverse=True)], q
  report = json.loads(open(out["report"]["json"]).read())
  assert [s["key"] for s in report["systems"]] == ["bm25", "base", "best_of_n", "aligned", "joined"]
  assert report["systems"][-1]["label"] == "BM25 + aligned, 2 samples joined (rsft_then_dpo)"
  assert [row[0] for row in report["tables"][0]["rows"]] == [s["label"] for s in report["systems"]]


def test_aqe_two_processes_equal_one(models, aqe_run, tmp_path):
  covered = _two_processes_equal_one(AQE_SPEC, lambda w: _aqe_overrides(w, models), aqe_run, tmp_path / "aqe",
                                     split=("generate_train", "score_train/scored", "generate_sampled"))
  assert covered["score_train/scored"] > 0 and covered["select/selected.jsonl"] > 0
  assert {"align_rsft/metrics.jsonl", "align/metrics.jsonl", "evaluate_best_of_n/metrics.json"} <= set(covered)


# ---------------------------------------------------------------------------------------------
# ReadQG

def test_readqg_document_pairs():
  from qgjax.methods.readqg.pairs import document_pairs, rescale

  assert rescale([4, 2, 3]) == [1.0, 0.0, 0.5] and rescale([2, 2]) == [1.0, 1.0]
  pos, neg = document_pairs({"a": 4, "b": 1, "c": 3, "d": 2}, m=2, seed=0)
  assert [q for q, _ in pos] == ["a", "c"] and [q for q, _ in neg] == ["b", "d"]
  assert [s for _, s in pos] == [1.0, pytest.approx(2 / 3)] and [s for _, s in neg] == [0.0, pytest.approx(1 / 3)]
  # only pairs with a grade gap: {1, 1, 1, 0} and {2, 1, 1, 0} at m=2 give one pair (the second would
  # be grade 1 vs 1); {2, 2, 1, 0} gives two
  for judged, n_pairs in (({"a": 1, "b": 1, "c": 1, "d": 0}, 1), ({"a": 2, "b": 1, "c": 1, "d": 0}, 1),
                          ({"a": 2, "b": 2, "c": 1, "d": 0}, 2)):
    pos, neg = document_pairs(judged, m=2, seed=0)
    assert len(pos) == len(neg) == n_pairs
    assert all(judged[p] > judged[n] for (p, _), (n, _) in zip(pos, neg)) and neg[0][0] == "d"
  pos, neg = document_pairs({"a": 1, "b": 1}, m=1, seed=0, strict=False)   # keep_flat
  assert len(pos) == len(neg) == 1 and pos[0][1] == neg[0][1] == 1.0


def test_split_corpus_leaves_out_empty_documents(tmp_path):
  from qgjax.data.beir import Corpus
  from qgjax.jobs.split import _link_corpus

  src = tmp_path / "corpus.jsonl"
  src.write_text('{"_id": "a", "text": "wind tunnel"}\n{"_id": "b", "title": " ", "text": ""}\n'
                 '{"_id": "c", "title": "flutter", "text": ""}\n')
  assert _link_corpus(src, tmp_path / "copy.jsonl") == ["b"]   # the reader refuses "b"
  assert Corpus(tmp_path / "copy.jsonl").doc_ids == ["a", "c"] and not (tmp_path / "copy.jsonl").is_symlink()
  # a malformed line stays as it is, for the corpus reader to name (it used to crash the copy)
  src.write_text('{"_id": "a", "text": ""}\n{"_id": "b", "text": \n')
  assert _link_corpus(src, tmp_path / "copy.jsonl") == ["a"]
  assert (tmp_path / "copy.jsonl").read_text() == '{"_id": "b", "text": \n'
  src.write_text('{"_id": "a", "text": "wind tunnel"}\n')
  assert _link_corpus(src, tmp_path / "copy.jsonl") == [] and (tmp_path / "copy.jsonl").is_symlink()


def test_split_drops_queries_without_a_relevant_document(tmp_path):
  import ml_collections

  from qgjax.jobs import split

  src = tmp_path / "src"
  (src / "qrels").mkdir(parents=True)
  (src / "corpus.jsonl").write_text('{"_id": "a", "text": "wind tunnel"}\n{"_id": "b", "title": "", "text": ""}\n'
                                    '{"_id": "c", "text": "flutter"}\n')
  (src / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": q}) + "\n" for q in "pqrstu"))
  # p, s: a relevant document; q: judged only with grade 0; r: relevant only to the empty "b"; t: only to "zz",
  # which is not in the corpus
  (src / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\np\ta\t1\nq\tc\t0\nr\tb\t2\nr\tc\t0\n")
  (src / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\ns\tc\t2\nt\tzz\t1\nu\ta\t0\n")
  cfg = ml_collections.ConfigDict(dict(data_dir=str(src), workdir=str(tmp_path / "w"), how="splits", seed=0,
                                       train_split="train", test_split="test", test_fraction=0.5, max_train=0,
                                       max_test=0, dev_queries=0))
  summary = split.run(cfg)
  assert summary["dropped_no_relevant"] == {"train": 2, "test": 2} and summary["dropped_empty_documents"] == ["b"]
  data = tmp_path / "w" / "data"
  assert [q["_id"] for q in _jsonl(data / "queries_train.jsonl")] == ["p"]
  assert [q["_id"] for q in _jsonl(data / "queries_test.jsonl")] == ["s"]
  (src / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nt\tzz\t1\n")
  with pytest.raises(QgjaxError, match="relevant document"):
    split.run(cfg)


def test_split_sets_dev_queries_apart_without_changing_the_training_queries(tmp_path):
  """dev_queries=N: the N training queries with the largest seeded hashes become the dev split (queries
  and qrels), never training queries; the training queries of a max_train run stay those of the run
  without dev; asking for more dev queries than there are is an error."""
  from qgjax.config import build_config
  from qgjax.jobs import split

  src = tmp_path / "src"
  (src / "qrels").mkdir(parents=True)
  (src / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": f"doc {i}"}) + "\n" for i in range(12)))
  qids = [f"q{i}" for i in range(12)]
  (src / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": f"query {q}"}) + "\n" for q in qids))
  (src / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\td{i}\t1\n" for i, q in enumerate(qids[:10])))
  (src / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\td{i + 10}\t2\n" for i, q in enumerate(qids[10:])))
  run = lambda name, **kw: split.run(build_config(os.path.join(REPO, "configs", "split.py"), [
      ("data_dir", str(src)), ("workdir", str(tmp_path / name))] + [(k, str(v)) for k, v in kw.items()]))
  ids = lambda name, side: [q["_id"] for q in _jsonl(tmp_path / name / "data" / f"queries_{side}.jsonl")]
  whole = run("whole")
  assert whole["train_queries"] == 10 and "dev_queries" not in whole
  assert not (tmp_path / "whole" / "data" / "queries_dev.jsonl").exists()
  by_hash = ids("whole", "train")   # all 10, smallest hash first
  summary = run("dev", dev_queries=3)
  assert summary["dev_queries"] == 3 and summary["dev_qrels"] == 3 and summary["train_queries"] == 7
  assert ids("dev", "dev") == by_hash[7:] and ids("dev", "train") == by_hash[:7] and ids("dev", "test") == ids("whole", "test")
  rows = (tmp_path / "dev" / "data" / "qrels" / "dev.tsv").read_text().splitlines()[1:]
  assert sorted(r.split("\t")[0] for r in rows) == sorted(by_hash[7:]) and all(r.endswith("\t1") for r in rows)
  run("small", max_train=4)
  run("small_dev", max_train=4, dev_queries=3)
  assert ids("small_dev", "train") == ids("small", "train") == by_hash[:4]
  with pytest.raises(QgjaxError, match="dev_queries=10"):
    run("too_many", dev_queries=10)


def test_tiny_readqg_recipe(models, readqg_run):
  from qgjax.recipes.readqg import STAGES

  spec = READQG_SPEC
  work, first, _ = readqg_run
  over = _readqg_overrides(work, models)
  names = [s.name for s in STAGES]
  assert first["ran"] == names

  # document-centric pairs: training-side queries only, every document with >= 2m of them
  train = {q["_id"]: q["text"] for q in _jsonl(work / "split" / "data" / "queries_train.jsonl")}
  pairs = _jsonl(work / "pairs" / "pairs.jsonl")
  assert pairs
  for p in pairs:
    assert len(p["positive"]) == len(p["negative"]) == 1
    assert set(p["positive"] + p["negative"]) <= set(train.values())
    assert all(0.0 <= s <= 1.0 for s in p["positive_score"] + p["negative_score"])
    assert min(p["positive_score"]) > max(p["negative_score"])
  # the soft prompts were exported with the T5; r=1 and r=0 queries for the first 24 documents
  assert (work / "align" / "export" / "soft_prompt.safetensors").is_file()
  gen = _records(work / "generate")
  assert {r["r"] for r in gen} == {0.0, 1.0} and len({r["doc_id"] for r in gen}) <= 24
  assert all(r["sample_idx"] < 2 if r["r"] == 1.0 else 2 <= r["sample_idx"] < 4 for r in gen)
  ce = _jsonl(work / "generate" / "ce_pairs.jsonl")
  assert ce and all(c["chosen"] and c["rejected"] for c in ce)
  for stage in ("ce_readqg", "ce_supervised"):
    assert (work / stage / "export" / "config.json").is_file()
    summary = json.loads((work / stage / "summary.json").read_text())
    assert (summary["dtype"], summary["attention"]) == ("float32", "xla")   # "auto" on a CPU host

  report = json.loads(open(first["report"]["json"]).read())
  assert [s["key"] for s in report["systems"]] == ["bm25", "supervised", "readqg"]
  assert [m["label"] for m in report["measures"]] == ["nDCG@10", "Recall@100", "MRR@10"]
  recall = {s["key"]: s["metrics"]["R@100"] for s in report["systems"]}
  assert recall["readqg"] == recall["supervised"] == recall["bm25"]  # re-ranking the top 100 keeps them
  quality = report["tables"][0]
  assert quality["columns"] == ["generator", "queries", "documents", "diversity", "rel+", "rel-", "Δrel"]
  row = quality["rows"][0]
  assert int(row[1]) == len(gen) and 0.0 <= float(row[3]) <= 1.0
  assert float(row[6]) == pytest.approx(float(row[4]) - float(row[5]), abs=2e-4)
  assert set(report["reward"]["stats"]) == {"r=1", "r=0"}

  again = _in_process(spec, over)
  assert again["ran"] == [] and again["skipped"] == names


def test_readqg_two_processes_equal_one(models, readqg_run, tmp_path):
  covered = _two_processes_equal_one(READQG_SPEC, lambda w: _readqg_overrides(w, models), readqg_run,
                                     tmp_path / "readqg", split=("generate",))
  assert covered["generate"] > 0 and covered["generate/ce_pairs.jsonl"] > 0
  assert {"align/metrics.jsonl", "ce_readqg/metrics.jsonl", "evaluate_readqg/metrics.json"} <= set(covered)


def test_tiny_readqg_recipe_on_gs_equals_local(gcs, models, readqg_run):
  """The tiny ReadQG recipe with workdir=gs://<bucket>/readqg on fake-gcs-server (split copying the
  corpus into the bucket, pairs, the soft-prompt export read back by generate through its local
  copy, ce_pairs.jsonl, both cross-encoders, evaluate, the report): every output of the local run
  (`readqg_run`; its flock files, orbax's internals and the PNG aside) is in the bucket with the
  same content."""
  from qgjax.data import storage

  work, first, one = readqg_run
  remote = f"gs://{object_storage.BUCKET}/readqg"
  result = run_pipeline(READQG_SPEC, _readqg_overrides(remote, models))
  assert result["ran"] == first["ran"]
  fs = storage.filesystem()
  fs.invalidate_cache(remote)
  objects = {o[len(remote) - len("gs://") + 1:] for o in fs.find(remote)}
  assert not [o for o in objects if o.endswith(".lock") or o.endswith(".tmp")]
  compared = []
  for path in sorted(one.rglob("*")):
    rel = path.relative_to(one).as_posix()
    if path.is_dir() or path.name == ".lock" or "/checkpoints/" in rel or rel.endswith(".png"):
      continue
    assert rel in objects, rel
    assert object_storage._compared(rel, storage.read_bytes(f"{remote}/{rel}"), {remote: "<workdir>"}) == \
        object_storage._compared(rel, path.read_bytes(), {str(work): "<workdir>"}), rel
    compared.append(rel)
  assert {"split/data/corpus.jsonl", "generate/ce_pairs.jsonl", "align/export/soft_prompt.safetensors",
          "ce_readqg/export/config.json", "report/report.json"} <= set(compared) and len(compared) > 40, compared


def test_tiny_readqg_decoder_recipe(models, tmp_path):
  """configs/readqg_recipe.py:tiny,decoder: the same stages with the soft prompts on a frozen decoder-only LM."""
  from qgjax.recipes.readqg import STAGES

  spec = os.path.join(REPO, "configs", "readqg_recipe.py") + ":tiny,decoder"
  work = tmp_path / "readqg_decoder"
  first = _cli(spec, [("workdir", str(work)), ("generator", models[0]), ("encoder", models[1])])
  assert first["ran"] == [s.name for s in STAGES]
  export = work / "align" / "export"
  meta = json.loads((export / "readqg.json").read_text())
  assert meta["kind"] == "decoder" and meta["generator"] == os.path.abspath(models[0])
  from qgjax.train.export import EXPORT_MARKER
  assert sorted(os.listdir(export)) == sorted(["readqg.json", "soft_prompt.safetensors", EXPORT_MARKER])  # no base LM
  gen = _records(work / "generate")
  assert gen and {r["r"] for r in gen} <= {0.0, 1.0} and len({r["doc_id"] for r in gen}) <= 24
  assert all(r["query"] and "\n" not in r["query"] and r["num_tokens"] >= 1 for r in gen)
  assert all(r["sample_idx"] < 2 if r["r"] == 1.0 else 2 <= r["sample_idx"] < 4 for r in gen)
  report = json.loads(open(first["report"]["json"]).read())
  assert [s["key"] for s in report["systems"]] == ["bm25", "supervised", "readqg"]
  assert "decoder-only" in report["tables"][0]["rows"][0][0]


def test_dpo_qg_trains_the_cross_encoder_reward_from_qrels(tmp_path):
  """reward=cross_encoder without a model: the reward_model stage (cross_encoder task, qrels mode, the
  collection's train split) runs first and every score stage reads its export; with a model given, or
  another reward, there is no such stage and the score stages keep their own cross_encoder.model."""
  from qgjax.errors import ConfigError
  from qgjax.pipeline.runner import stage_configs
  from qgjax.recipes.dpo_qg import RECIPE, STAGES

  spec = os.path.join(REPO, "configs", "pipeline.py") + ":tiny"
  base = [("workdir", str(tmp_path)), ("data_dir", "/data/nfcorpus")]
  reward = [("score.set.rewards", "bm25_rank,cross_encoder"), ("score.set.reward", "cross_encoder")]
  _, configs = stage_configs(build_config(spec, base + reward), STAGES)
  by = {s.name: c for s, c in configs}
  assert [s.name for s, _ in configs].index("reward_model") < [s.name for s, _ in configs].index("score")
  rm = by["reward_model"]
  assert (rm.task, rm.data.qrels_split, rm.data.corpus, rm.data.train) == ("cross_encoder", "train", "/data/nfcorpus", "")
  for name in ("score", "score_unaligned", "score_aligned"):
    assert by[name].cross_encoder.model == str(tmp_path / "reward_model" / "export")
  RECIPE.check(build_config(spec, base + reward), by)
  with pytest.raises(ConfigError, match="evaluation split"):
    RECIPE.check(build_config(spec, base + reward), dict(by, reward_model=build_config(
        os.path.join(REPO, "configs", "cross_encoder.py") + ":tiny,qrels")))   # qrels_split test = split test
  given = reward + [("score.set.cross_encoder.model", "/models/ce")]
  for overrides in (given, [("score.set.rewards", "bm25_rank")]):
    _, configs = stage_configs(build_config(spec, base + overrides), STAGES)
    by = {s.name: c for s, c in configs}
    assert "reward_model" not in by
    assert by["score"].cross_encoder.model == ("/models/ce" if overrides is given else "")



def test_dpo_qg_mines_with_the_trained_cross_encoder_as_margin_mse_teacher(tmp_path):
  """mine.set.reranker.kind=cross_encoder without a model (GPL's MarginMSE teacher): the reward_model
  stage runs even with the BM25-rank reward, both mine stages rerank with its export and read it as an
  input, while the score stages keep the BM25 reward; a given model means no such stage."""
  from qgjax.pipeline.runner import stage_configs
  from qgjax.recipes.dpo_qg import STAGES

  spec = os.path.join(REPO, "configs", "pipeline.py") + ":tiny"
  base = [("workdir", str(tmp_path)), ("data_dir", "/data/nfcorpus")]
  teacher = [("mine.set.reranker.kind", "cross_encoder"), ("mine.set.mining.store_scores", "True"),
             ("retriever.set.loss", "margin_mse"), ("retriever.set.similarity", "dot")]
  _, configs = stage_configs(build_config(spec, base + teacher), STAGES)
  by = {s.name: c for s, c in configs}
  names = [s.name for s, _ in configs]
  assert names.index("reward_model") < names.index("mine_unaligned")
  for name in ("mine_unaligned", "mine_aligned"):
    assert by[name].reranker.model == str(tmp_path / "reward_model" / "export")
    assert by[name].mining.store_scores is True
    assert "reward_model" in next(s for s in STAGES if s.name == name).needs
  assert by["score"].reward == "bm25_rank" and by["score"].cross_encoder.model == ""
  assert by["retriever_aligned"].loss == "margin_mse"
  _, configs = stage_configs(build_config(spec, base + teacher + [("mine.set.reranker.model", "/models/ce")]), STAGES)
  by = {s.name: c for s, c in configs}
  assert "reward_model" not in by and by["mine_aligned"].reranker.model == "/models/ce"
