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
