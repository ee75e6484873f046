"""`qgjax evaluate` end to end on the shipped demo corpus, through the CLI."""

import json
import pathlib

import pytest

from qgjax import cli
from qgjax.data import demo_dir
from qgjax.data.beir import load_qrels
from qgjax.evaluation import ir_metrics

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "evaluate.py")


def test_evaluate_demo_writes_metrics_and_run(tmp_path, capsys):
  rc = cli.main(["evaluate", "--config", CONFIG, f"--config.workdir={tmp_path}",
                 "--config.retriever=bm25, bm25+bm25"])
  assert rc == 0
  out = capsys.readouterr().out
  assert "demo (test): 28 queries, 52 documents" in out and "nDCG@10" in out
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["num_queries"] == 28 and set(metrics["systems"]) == {"bm25", "bm25+bm25"}
  run = ir_metrics.read_trec_run(tmp_path / "run.bm25.trec")
  qrels = load_qrels(demo_dir() / "qrels" / "test.tsv")
  assert set(run) == set(qrels)  # every judged query has hits
  assert max(len(v) for v in run.values()) <= 1000
  # Independent check: ir_measures (pytrec_eval) on the written run file.
  ir_measures = pytest.importorskip("ir_measures")
  ref = ir_measures.calc_aggregate([ir_measures.nDCG @ 10, ir_measures.R @ 100,
                                    ir_measures.Success @ 1], qrels, run)
  got = metrics["systems"]["bm25"]
  assert got["nDCG@10"] == pytest.approx(ref[ir_measures.nDCG @ 10], abs=1e-12)
  assert got["R@100"] == pytest.approx(ref[ir_measures.R @ 100], abs=1e-12)
  assert got["Success@1"] == pytest.approx(ref[ir_measures.Success @ 1], abs=1e-12)
  assert got["nDCG@10"] > 0.8
  # re-scoring BM25 candidates with BM25 changes nothing
  assert metrics["systems"]["bm25+bm25"] == metrics["systems"]["bm25"]


def test_tiny_variant_and_cache(tmp_path, monkeypatch):
  from qgjax.retrieval import bm25

  builds = []
  real = bm25.build_bm25
  monkeypatch.setattr(bm25, "build_bm25", lambda *a, **k: builds.append(1) or real(*a, **k))   # counts, then the real one
  cache = tmp_path / "cache"
  args = ["evaluate", "--config", f"{CONFIG}:tiny", f"--config.workdir={tmp_path / 'w'}",
          f"--config.bm25.cache_dir={cache}"]
  assert cli.main(args) == 0 and len(builds) == 1
  first = (tmp_path / "w" / "run.bm25.trec").read_text()
  assert cli.main(args) == 0 and len(builds) == 1   # second run loads the cached index, builds nothing
  assert len(list(cache.iterdir())) == 1 and (tmp_path / "w" / "run.bm25.trec").read_text() == first
  metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
  assert metrics["num_queries"] == 8 and metrics["config"]["depth"] == 100


def test_user_errors_are_one_line(tmp_path, capsys):
  rc = cli.main(["evaluate", "--config", CONFIG, f"--config.workdir={tmp_path}",
                 "--config.retriever=bm25,dnse"])
  err = capsys.readouterr().err
  assert rc == 2 and "unknown retrieval stage 'dnse'" in err and "dense" in err
  assert not (tmp_path / "run.bm25.trec").exists()   # refused before BM25 ran
  bad = tmp_path / "badids"
  (bad / "qrels").mkdir(parents=True)
  (bad / "corpus.jsonl").symlink_to(demo_dir() / "corpus.jsonl")
  (bad / "queries.jsonl").symlink_to(demo_dir() / "queries.jsonl")
  (bad / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nQ01\tdemo-01\t1\n")   # ids are q01...
  with pytest.warns(Warning):
    rc = cli.main(["evaluate", "--config", CONFIG, f"--config.workdir={tmp_path}", f"--config.data_dir={bad}"])
  assert rc == 2 and "no query of queries.jsonl has judgements in qrels/test.tsv" in capsys.readouterr().err
  rc = cli.main(["evaluate", "--config", CONFIG, f"--config.data_dir={tmp_path / 'none'}"])
  assert rc == 2 and "BEIR data directory not found" in capsys.readouterr().err
  rc = cli.main(["evaluate", "--config", CONFIG, f"--config.workdir={tmp_path}",
                 "--config.measures=nDCG@10,MAP"])
  assert rc == 2 and "unknown measure 'MAP'" in capsys.readouterr().err
  rc = cli.main(["evaluate", "--config", CONFIG, "--config.bm25.bakend=pyserini"])
  assert rc == 2 and "did you mean 'backend'" in capsys.readouterr().err


def test_query_own_id_is_left_out_of_the_run(tmp_path):
  """BEIR's ignore_identical_ids: a corpus document with the query's id is not retrieved for it."""
  data = tmp_path / "data"
  (data / "qrels").mkdir(parents=True)
  docs = {"q1": "solar wind particles", "d1": "the solar wind carries charged particles", "d2": "tidal locking"}
  (data / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in docs.items()))
  (data / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "solar wind particles"}) + "\n")
  (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
  base = ["evaluate", "--config", CONFIG, f"--config.data_dir={data}", "--config.measures=RR@10"]
  assert cli.main(base + [f"--config.workdir={tmp_path / 'a'}"]) == 0
  m = json.loads((tmp_path / "a" / "metrics.json").read_text())
  run = ir_metrics.read_trec_run(tmp_path / "a" / "run.bm25.trec")
  assert "q1" not in run["q1"] and m["identical_ids_removed"] == {"bm25": 1} and m["systems"]["bm25"]["RR@10"] == 1.0
  assert cli.main(base + [f"--config.workdir={tmp_path / 'b'}", "--config.ignore_identical_ids=false"]) == 0
  m = json.loads((tmp_path / "b" / "metrics.json").read_text())
  assert m["systems"]["bm25"]["RR@10"] == 0.5   # the query's own text ranks first, unjudged
