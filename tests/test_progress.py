"""The work and estimated-time lines of long loops (qgjax.data.progress.WorkEstimate), on a
hand-driven clock so that the numbers are checked exactly."""

from __future__ import annotations

import logging

from qgjax.data.progress import WorkEstimate, progress


class Clock:
  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


def test_work_then_estimate_after_the_warm_up(caplog):
  clock = Clock()
  with caplog.at_level(logging.INFO, logger="qgjax"):
    est = WorkEstimate(1000, 100, "score", "query", measure_s=5.0, now=clock)
    assert caplog.messages == ["score: 900 queries to do (100 done earlier)"]
    clock.t += 60.0       # the first batch compiles: not part of the rate
    est.update(10)
    clock.t += 2.0
    est.update(20)        # 2 s measured: not enough yet
    assert est.estimated is None and len(caplog.messages) == 1
    clock.t += 3.0
    est.update(30)        # 50 queries in 5 s after the warm-up: 10/s, 840 left -> 84 s
  assert est.estimated == 84.0
  assert caplog.messages[1].startswith("score: 10 queries/s measured over 50 queries: about 0:01:24 for the 840 left")
  est.update(10)
  assert len(caplog.messages) == 2   # one estimate per loop


def test_nothing_left_says_nothing(caplog):
  with caplog.at_level(logging.INFO, logger="qgjax"):
    WorkEstimate(5, 5, "mine", "query")
  assert caplog.messages == []


def test_progress_bars_feed_the_estimate(caplog):
  clock = Clock()
  with caplog.at_level(logging.INFO, logger="qgjax"):
    bar = progress(total=4, desc="embed corpus", unit="doc")
    bar.estimate.now = clock
    bar.estimate.measure_s = 1.0
    for _ in range(3):
      clock.t += 1.0
      bar.update(1)
    bar.close()
    items = list(progress(range(3), desc="rerank", unit="pair"))
  assert items == [0, 1, 2]
  assert caplog.messages[0] == "embed corpus: 4 docs to do (0 done earlier)"
  # warm-up at the first doc; one more second and one more doc: 1 doc/s, 2 left
  assert caplog.messages[1].startswith("embed corpus: 1 docs/s measured over 1 docs: about 0:00:02 for the 2 left")
  assert caplog.messages[2] == "rerank: 3 pairs to do (0 done earlier)"


def test_how_far_lines_every_every_s_after_the_estimate(caplog):
  clock = Clock()
  with caplog.at_level(logging.INFO, logger="qgjax"):
    est = WorkEstimate(100, 0, "train dpo", "step", measure_s=5.0, every_s=60.0, now=clock)
    est.update(1)             # warm-up (compile)
    clock.t += 10.0
    est.update(5)             # 5 steps in 10 s: 0.5/s, 94 left -> 188 s; the estimate line
    clock.t += 30.0
    est.update(15)            # 30 s after the estimate: no line yet
    assert len(caplog.messages) == 2
    clock.t += 40.0
    est.update(20)            # 41 done, 40 steps in 80 s since the warm-up: 0.5/s, 59 left -> 118 s
    clock.t += 10.0
    est.update(1)             # 10 s after that line: none
  assert caplog.messages[2].startswith("train dpo: 41/100 steps, 0.5 steps/s, about 0:01:58 left (ends ~")
  assert len(caplog.messages) == 3


def test_bar_less_progress_logs_every_QGJAX_PROGRESS_LOG_S(monkeypatch):
  monkeypatch.setenv("QGJAX_PROGRESS", "0")
  monkeypatch.setenv("QGJAX_PROGRESS_LOG_S", "120")
  assert progress(total=3, desc="x").estimate.every_s == 120.0
  monkeypatch.setenv("QGJAX_PROGRESS", "1")
  assert progress(total=3, desc="x").estimate.every_s == 0.0   # a bar shows: no extra lines
  monkeypatch.setenv("QGJAX_PROGRESS", "0")
  monkeypatch.setenv("QGJAX_PROGRESS_LOG_S", "soon")
  import pytest
  from qgjax.errors import ConfigError
  with pytest.raises(ConfigError, match="QGJAX_PROGRESS_LOG_S='soon'"):
    progress(total=3, desc="x")


def test_plural_units():
  from qgjax.data.progress import plural
  assert [plural(u) for u in ("query", "doc", "batch", "pass", "day", "step")] == \
      ["queries", "docs", "batches", "passes", "days", "steps"]
