"""Paired randomization test and bootstrap interval (qgjax.evaluation.significance) against a hand
enumeration and scipy.stats.permutation_test, and tools/compare_runs.py on written TREC runs."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from qgjax.evaluation.significance import compare, paired_bootstrap_ci, paired_randomization

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_exact_randomization_by_hand():
  # differences (0.3, -0.1, 0.2): mean 0.1333; the 8 sign flips give |means| 0.1333, 0.2, 0, 0.0667,
  # 0.0667, 0, 0.2, 0.1333 -> 4 of 8 reach 0.1333
  a, b = [0.5, 0.4, 0.1], [0.8, 0.3, 0.3]
  assert paired_randomization(a, b, exact=True) == pytest.approx(4 / 8)
  assert paired_randomization(a, a, exact=True) == 1.0   # no difference at all


def test_randomization_matches_scipy_and_exact_enumeration():
  scipy_stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  a = rng.uniform(size=14)
  b = a + rng.normal(0.08, 0.1, size=14)
  exact = paired_randomization(a, b, exact=True)
  ref = scipy_stats.permutation_test((a, b), lambda x, y: np.mean(y - x), permutation_type="samples",
                                     n_resamples=np.inf, alternative="two-sided").pvalue
  assert exact == pytest.approx(ref, abs=1e-9)
  sampled = paired_randomization(a, b, samples=20_000, seed=1)
  assert abs(sampled - exact) < 0.01
  assert exact < 0.05   # a real shift of 0.08 over 14 queries with sd 0.1


def test_bootstrap_interval_and_counts():
  rng = np.random.default_rng(2)
  a = rng.uniform(size=400)
  b = a + 0.02 + rng.normal(0, 0.05, size=400)
  low, high = paired_bootstrap_ci(a, b, samples=4000)
  d = b - a
  se = d.std(ddof=1) / np.sqrt(len(d))
  # the percentile interval of a mean of 400 is close to the normal one, mean +- 1.96 se
  assert low == pytest.approx(d.mean() - 1.96 * se, abs=0.25 * se)
  assert high == pytest.approx(d.mean() + 1.96 * se, abs=0.25 * se)
  c = compare([0.1, 0.5, 0.3, 0.2], [0.2, 0.5, 0.1, 0.4], samples=1000)
  assert (c.wins, c.losses, c.ties, c.n) == (2, 1, 1, 4)
  assert c.diff == pytest.approx(0.025) and c.mean_b - c.mean_a == pytest.approx(0.025)
  with pytest.raises(ValueError, match="one length"):
    compare([0.1, 0.2], [0.3])


def test_compare_runs_tool(tmp_path):
  sys.path.insert(0, os.path.join(REPO, "tools"))
  import compare_runs

  (tmp_path / "qrels").mkdir()
  (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t1\n")
  # run A finds every relevant document first; run B second for q1, not at all for q3 (missing query)
  (tmp_path / "a.trec").write_text("".join(f"{q} Q0 d{i} 1 2.0 a\n{q} Q0 dx 2 1.0 a\n"
                                           for i, q in ((1, "q1"), (2, "q2"), (3, "q3"))))
  (tmp_path / "b.trec").write_text("q1 Q0 dx 1 2.0 b\nq1 Q0 d1 2 1.0 b\nq2 Q0 d2 1 1.0 b\n")
  out = compare_runs.main(["--data", str(tmp_path), "--run", f"A={tmp_path / 'a.trec'}",
                           "--run", f"B={tmp_path / 'b.trec'}", "--measure", "RR@10", "--samples", "200",
                           "--out", str(tmp_path / "sig.json")])
  assert out["means"]["A"]["RR@10"] == pytest.approx(1.0)
  assert out["means"]["B"]["RR@10"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
  (pair,) = out["pairs"]
  assert (pair["wins"], pair["losses"], pair["ties"]) == (0, 2, 1)
  assert json.loads((tmp_path / "sig.json").read_text())["pairs"][0]["diff"] == pytest.approx(-0.5)
