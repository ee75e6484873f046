"""A stage's time over all its attempts (qgjax.pipeline.clock): an attempt killed with SIGKILL still counts."""

import json
import os
import signal
import subprocess
import sys
import time

from qgjax.pipeline.clock import CLOCK, StageClock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_killed_attempt_counts_in_the_next_ones_total(tmp_path):
  stage = tmp_path / "generate"
  code = ("import time, pathlib; from qgjax.pipeline.clock import StageClock\n"
          f"with StageClock(pathlib.Path({str(stage)!r}), interval_s=0.05):\n  time.sleep(60)\n")
  child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", "")))
  deadline = time.time() + 60
  while time.time() < deadline:   # until the clock has counted at least 0.5 s
    if (stage / CLOCK).exists() and json.loads((stage / CLOCK).read_text())["attempts"][0]["seconds"] >= 0.5:
      break
    time.sleep(0.05)
  child.send_signal(signal.SIGKILL)
  child.wait()
  killed = json.loads((stage / CLOCK).read_text())["attempts"]
  assert len(killed) == 1 and killed[0]["seconds"] >= 0.5

  with StageClock(stage, interval_s=0.05) as clock:
    time.sleep(0.3)
  summary = clock.summary()
  assert summary["attempts"] == 2
  assert summary["seconds_all_attempts"] >= killed[0]["seconds"] + 0.3 - 0.05
  clock.remove()
  assert not (stage / CLOCK).exists()


def test_a_failed_attempt_is_kept_and_a_disabled_clock_writes_nothing(tmp_path):
  stage = tmp_path / "score"
  try:
    with StageClock(stage, interval_s=10):
      raise RuntimeError("the job failed")
  except RuntimeError:
    pass
  assert len(json.loads((stage / CLOCK).read_text())["attempts"]) == 1
  other = tmp_path / "other"
  with StageClock(other, enabled=False) as clock:
    pass
  assert clock.summary()["attempts"] == 1 and not other.exists()
  (stage / CLOCK).write_text("{not json")
  with StageClock(stage, interval_s=10) as clock:   # unreadable: this attempt alone, with a warning
    pass
  assert clock.summary()["attempts"] == 1
