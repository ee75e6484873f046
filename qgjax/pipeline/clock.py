"""A stage's wall time over all its attempts: a run killed in the middle of a stage and started again
spends time in both, and the stage's recorded time should say so.

  with StageClock(stage_dir) as clock:      # <stage_dir>/STAGE_CLOCK.json while the stage runs
    run the stage
  clock.summary()   # {"attempts": 2, "seconds_all_attempts": 5712.4}

Each attempt is {start (Unix time), seconds}; a background thread rewrites the file every
`interval_s` seconds, so an attempt that is killed is still counted, to within `interval_s`. The
runner puts the summary into the stage's STAGE_DONE.json and removes the file.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from qgjax.data import storage

CLOCK = "STAGE_CLOCK.json"
log = logging.getLogger(__name__)


class StageClock:
  def __init__(self, stage_dir, interval_s: float = 30.0, enabled: bool = True):
    self.path = stage_dir / CLOCK
    self.stage_dir, self.interval_s, self.enabled = stage_dir, float(interval_s), enabled
    self.attempts: list[dict] = []
    self.start = 0.0
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _earlier(self) -> list[dict]:
    try:
      data = json.loads(self.path.read_text()) if self.path.exists() else {}
      return [{"start": float(a["start"]), "seconds": float(a["seconds"])} for a in data.get("attempts", [])]
    except (ValueError, KeyError, TypeError, OSError) as e:
      log.warning("%s: unreadable (%s); counting this attempt only", self.path, e)
      return []

  def _write(self) -> None:
    self.attempts[-1]["seconds"] = round(time.time() - self.start, 1)
    try:
      storage.write_bytes_atomic(self.path, json.dumps({"attempts": self.attempts}).encode())
    except OSError as e:   # the clock must never fail the stage
      log.warning("%s: not written (%s)", self.path, e)

  def _tick(self) -> None:
    while not self._stop.wait(self.interval_s):
      self._write()

  def __enter__(self) -> "StageClock":
    self.start = time.time()
    self.attempts = (self._earlier() if self.enabled else []) + [{"start": round(self.start, 1), "seconds": 0.0}]
    if self.enabled:
      if not storage.is_remote(self.stage_dir):
        self.stage_dir.mkdir(parents=True, exist_ok=True)
      self._write()
      self._thread = threading.Thread(target=self._tick, name="qgjax-stage-clock", daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self.enabled and exc[0] is not None:
      self._write()   # a failed attempt stays counted for the next one
    self.attempts[-1]["seconds"] = time.time() - self.start   # unrounded: it encloses the stage's own timing

  def summary(self) -> dict:
    """Attempts and their seconds (2 decimals, like the marker's `seconds`, which this attempt encloses)."""
    return {"attempts": len(self.attempts),
            "seconds_all_attempts": round(sum(a["seconds"] for a in self.attempts), 2)}

  def remove(self) -> None:
    if self.enabled and self.path.exists():
      self.path.unlink()
