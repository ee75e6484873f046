"""Preference pairs and best-of-n: hand-computed expectations; the pairs job end to end."""

import json
import pathlib

import pytest

from qgjax import cli
from qgjax.preference.pairs import Candidate, all_pairs, best_of_n, best_vs_worst

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "pairs.py")


def _cands(rewards, texts=None):
  texts = texts or [f"q{i}" for i in range(len(rewards))]
  return [Candidate(i, t, float(r), {}) for i, (t, r) in enumerate(zip(texts, rewards))]


def _ids(pairs):
  return [(a.sample_idx, b.sample_idx) for a, b in pairs]


def test_all_pairs_margin_and_cap():
  c = _cands([3, 1, 2, 2])
  # every ordered pair with r_i > r_j: gaps 2 (0>1), 1 (0>2, 0>3, 2>1, 3>1); ties (2, 3) none
  assert _ids(all_pairs(c)) == [(0, 1), (0, 2), (0, 3), (2, 1), (3, 1)]
  assert _ids(all_pairs(c, margin=1.0)) == [(0, 1)]  # strictly more than the margin
  assert _ids(all_pairs(c, margin=0.5, cap=2)) == [(0, 1), (0, 2)]
  assert all_pairs(_cands([1, 1, 1])) == []


def test_pairs_skip_identical_texts():
  c = _cands([3, 1, 0], texts=["same", "same", "other"])
  assert _ids(all_pairs(c)) == [(0, 2), (1, 2)]
  assert _ids(best_vs_worst(c)) == [(0, 2)]


def test_best_vs_worst():
  assert _ids(best_vs_worst(_cands([-5, -1, -9, -1]))) == [(1, 2)]  # ties: lower sample index
  assert best_vs_worst(_cands([-5, -4]), margin=1.0) == []
  assert best_vs_worst(_cands([2.0])) == []


def test_best_of_n():
  c = _cands([0.5, 0.9, 0.9, 0.1], texts=["a", "b", "b", "c"])
  assert [x.sample_idx for x in best_of_n(c, 1)] == [1]
  assert [x.sample_idx for x in best_of_n(c, 3)] == [1, 0, 3]  # duplicate text "b" once
  assert [x.sample_idx for x in best_of_n(c, 3, min_reward=0.5)] == [1, 0]


def _scored(tmp_path, rows):
  path = tmp_path / "scored.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


ROWS = [  # two documents, 3 samples each; reward = -BM25 rank
    {"doc_id": "A", "sample_idx": 0, "query": "a0", "reward": -1.0, "rewards": {"bm25_rank": -1.0}, "logprob": -3.0},
    {"doc_id": "A", "sample_idx": 1, "query": "a1", "reward": -7.0, "rewards": {"bm25_rank": -7.0}, "logprob": -2.0},
    {"doc_id": "A", "sample_idx": 2, "query": "a2", "reward": -2.0, "rewards": {"bm25_rank": -2.0}, "logprob": -4.0},
    {"doc_id": "B", "sample_idx": 0, "query": "b0", "reward": -3.0, "rewards": {"bm25_rank": -3.0}, "logprob": -1.0},
    {"doc_id": "B", "sample_idx": 1, "query": "b1", "reward": -3.0, "rewards": {"bm25_rank": -3.0}, "logprob": -1.5},
]


def test_pairs_job_writes_expected_files(tmp_path):
  src = _scored(tmp_path, ROWS)
  out = tmp_path / "out"
  assert cli.main(["pairs", "--config", CONFIG, f"--config.input={src}", f"--config.workdir={out}",
                   "--config.max_pairs_per_doc=2", "--config.rsft.n_best=2"]) == 0
  pairs = [json.loads(l) for l in (out / "pairs.jsonl").read_text().splitlines()]
  # A: gaps 6 (a0 > a1), 5 (a2 > a1), 1 (a0 > a2) -> cap 2 keeps the two largest; B: a tie, no pair
  assert [(p["doc_id"], p["chosen"], p["rejected"]) for p in pairs] == [("A", "a0", "a1"), ("A", "a2", "a1")]
  assert pairs[0]["reward_chosen"] == -1.0 and pairs[0]["reward_rejected"] == -7.0
  assert pairs[0]["logprob_chosen"] == -3.0 and pairs[0]["rewards_rejected"] == {"bm25_rank": -7.0}
  rsft = [json.loads(l) for l in (out / "rsft.jsonl").read_text().splitlines()]
  assert [(r["doc_id"], r["query"], r["reward"]) for r in rsft] == [
      ("A", "a0", -1.0), ("A", "a2", -2.0), ("B", "b0", -3.0), ("B", "b1", -3.0)]
  summary = json.loads((out / "summary.json").read_text())
  assert summary["pairs"] == 2 and summary["groups"] == 2 and summary["groups_with_pairs"] == 1
  assert summary["mean_reward_chosen"] == -1.5 and summary["mean_reward_rejected"] == -7.0


def test_pairs_job_best_worst_aqe_and_named_reward(tmp_path):
  rows = [{"query_id": "q1", "sample_idx": i, "query": "statins", "expansion": f"e{i}",
           "reward": 0.0, "rewards": {"bm25_rank": r, "dense_cosine": c}}
          for i, (r, c) in enumerate([(-4.0, 0.2), (-1.0, 0.1), (-9.0, 0.5)])]
  src = _scored(tmp_path, rows)
  out = tmp_path / "out"
  assert cli.main(["pairs", "--config", CONFIG, f"--config.input={src}", f"--config.workdir={out}",
                   "--config.strategy=best_worst", "--config.reward=bm25_rank"]) == 0
  (pair,) = [json.loads(l) for l in (out / "pairs.jsonl").read_text().splitlines()]
  assert pair["query_id"] == "q1" and pair["source_query"] == "statins"
  assert (pair["chosen"], pair["rejected"]) == ("e1", "e2") and pair["reward_name"] == "bm25_rank"
  (best,) = [json.loads(l) for l in (out / "rsft.jsonl").read_text().splitlines()]
  assert best["completion"] == "e1" and "query" not in best
  out2 = tmp_path / "out2"
  assert cli.main(["pairs", "--config", CONFIG, f"--config.input={src}", f"--config.workdir={out2}",
                   "--config.strategy=best_worst", "--config.reward=dense_cosine"]) == 0
  (pair,) = [json.loads(l) for l in (out2 / "pairs.jsonl").read_text().splitlines()]
  assert (pair["chosen"], pair["rejected"]) == ("e2", "e1")


def test_pairs_job_keeps_outputs_of_other_settings(tmp_path, capsys):
  src = _scored(tmp_path, ROWS)
  out = tmp_path / "out"
  args = ["pairs", "--config", CONFIG, f"--config.input={src}", f"--config.workdir={out}"]
  assert cli.main(args) == 0
  before = (out / "pairs.jsonl").read_bytes()
  capsys.readouterr()
  assert cli.main(args) == 0 and "outputs are up to date" in capsys.readouterr().out
  assert cli.main(args + ["--config.margin=2"]) == 2
  assert "margin changed" in capsys.readouterr().err and (out / "pairs.jsonl").read_bytes() == before
  assert cli.main(args + ["--config.margin=2", "--config.overwrite=true"]) == 0
  assert len((out / "pairs.jsonl").read_text().splitlines()) == 2  # gaps 6 and 5 only


def test_pairs_job_bad_input(tmp_path, capsys):
  rows = [dict(ROWS[0]), {"doc_id": "A", "sample_idx": 1, "query": "a1", "rewards": {}}]
  src = _scored(tmp_path, rows)
  rc = cli.main(["pairs", "--config", CONFIG, f"--config.input={src}", f"--config.workdir={tmp_path / 'o'}"])
  assert rc == 2
  assert "scored.jsonl:2, field 'reward': record has no reward 'reward'" in capsys.readouterr().err


def test_can_choose_refuses_a_chosen_but_keeps_it_as_rejected():
  c = _cands([3, 1, 2])
  no_0 = lambda cand: cand.sample_idx != 0
  assert _ids(all_pairs(c, can_choose=no_0)) == [(2, 1)]
  assert _ids(best_vs_worst(c, can_choose=no_0)) == [(2, 1)]
  assert _ids(best_vs_worst(_cands([3, 1]), can_choose=lambda cand: False)) == []
  assert [x.sample_idx for x in best_of_n(c, 2, can_choose=no_0)] == [2, 1]


def test_pairs_job_copy_guard(tmp_path, capsys):
  """chosen_max_copied_span: a query repeating more than k consecutive words of its document is
  never chosen nor best-of-n; it can still be the rejected one."""
  data = tmp_path / "beir"
  data.mkdir()
  (data / "corpus.jsonl").write_text(
      json.dumps({"_id": "A", "title": "", "text": "Nuts protect against heart disease in adults."}) + "\n")
  rows = [  # a0 copies 5 words (best reward), a1 3 words, a2 none (worst)
      {"doc_id": "A", "sample_idx": 0, "query": "nuts protect against heart disease", "reward": -1.0},
      {"doc_id": "A", "sample_idx": 1, "query": "do nuts protect against stroke", "reward": -2.0},
      {"doc_id": "A", "sample_idx": 2, "query": "walnut benefits", "reward": -9.0}]
  src = _scored(tmp_path, rows)
  out = tmp_path / "out"
  assert cli.main(["pairs", "--config", CONFIG, f"--config.input={src}", f"--config.workdir={out}",
                   "--config.chosen_max_copied_span=3", f"--config.data_dir={data}"]) == 0
  pairs = [(p["chosen"], p["rejected"]) for p in map(json.loads, (out / "pairs.jsonl").read_text().splitlines())]
  # a0 > a1 and a0 > a2 are refused (a0 copies 5 words); a1 (3 words) > a2 stays
  assert pairs == [("do nuts protect against stroke", "walnut benefits")]
  rsft = [json.loads(l)["query"] for l in (out / "rsft.jsonl").read_text().splitlines()]
  assert rsft == ["do nuts protect against stroke"]
  summary = json.loads((out / "summary.json").read_text())
  assert summary["refused_as_chosen"] == 1 and summary["settings"]["chosen_max_copied_span"] == 3
  # without the corpus it says what is missing
  assert cli.main(["pairs", "--config", CONFIG, f"--config.input={src}", f"--config.workdir={tmp_path / 'o2'}",
                   "--config.chosen_max_copied_span=3"]) != 0
  assert "needs config.data_dir" in capsys.readouterr().err
