"""Progress bars for long jobs (items/s and ETA), quiet where nobody watches, and the work and
estimated time of each long loop in the log.

A bar is shown when stderr is a terminal and `CI` is unset. `QGJAX_PROGRESS=1` forces bars on
(e.g. in a log file), `QGJAX_PROGRESS=0` forces them off. Whether or not a bar shows, every bar
with a known total logs (`WorkEstimate`) how much work it has when it starts and, once the rate
is measured past the first (compiling) batch, the estimated time left. Where no bar shows (a job
logging to a file), a line every `QGJAX_PROGRESS_LOG_S` seconds (default 300; 0 = never) says how far
the loop has got:

  qgjax progress: score: 18165 queries to do (0 done earlier)
  qgjax progress: score: 41.2 queries/s measured over 1648 queries: about 0:06:42 for the 16517 left (ends ~07:31 UTC)
  qgjax progress: score: 12400/18165 queries, 41.5 queries/s, about 0:02:19 left (ends ~07:29 UTC)
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
log = logging.getLogger("qgjax.progress")
MEASURE_S = 5.0   # seconds of work after the first batch before the rate is trusted
LOG_EVERY_S = 300.0  # default seconds between "how far" lines where no bar shows


def log_every_s() -> float:
  """Seconds between a bar-less loop's progress lines: $QGJAX_PROGRESS_LOG_S, default 300, 0 = never."""
  raw = os.environ.get("QGJAX_PROGRESS_LOG_S", "").strip()
  try:
    return max(0.0, float(raw)) if raw else LOG_EVERY_S
  except ValueError:
    from qgjax.errors import ConfigError
    raise ConfigError(f"QGJAX_PROGRESS_LOG_S={raw!r} is not a number of seconds") from None


def plural(unit: str) -> str:
  """'query' -> 'queries', 'doc' -> 'docs', 'batch' -> 'batches'."""
  if unit.endswith("y") and unit[-2:-1] not in "aeiou":
    return unit[:-1] + "ies"
  return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


def _clock(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _ends(seconds_left: float) -> str:
  return time.strftime("%H:%M", time.gmtime(time.time() + seconds_left))


class WorkEstimate:
  """Logs a loop's work at its start and, once, its estimated time left at the measured rate;
  with `every_s` > 0, also how far it has got every `every_s` seconds after that estimate.

  total / initial: units in all / done by an earlier run. The first `update` ends the warm-up
  (it holds the compilation); the rate is what follows, over at least `measure_s` seconds.
  `now` is the clock (seconds), replaceable in tests."""

  def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "it", *,
               measure_s: float = MEASURE_S, every_s: float = 0.0, logger: logging.Logger | None = None,
               now=time.monotonic):
    self.total, self.done, self.desc, self.unit = int(total), int(initial), desc or "work", unit
    self.measure_s, self.every_s, self.log, self.now = float(measure_s), float(every_s), logger or log, now
    self.last_line: float | None = None           # when the estimate or the last "how far" line was logged
    self.warm: tuple[float, int] | None = None   # (time, units done) when the warm-up ended
    self.estimated: float | None = None          # seconds left, as logged
    left = self.total - self.done
    if left > 0:
      self.log.info("%s: %d %s to do (%d done earlier)", self.desc, left, plural(self.unit), self.done)

  def update(self, n: int = 1) -> None:
    self.done += int(n)
    t = self.now()
    if self.warm is None:
      self.warm = (t, self.done)
      return
    seconds, units = t - self.warm[0], self.done - self.warm[1]
    left = self.total - self.done
    if self.estimated is not None:
      if self.every_s > 0 and t - self.last_line >= self.every_s and units > 0 and left > 0:
        self.last_line = t
        rate = units / seconds
        self.log.info("%s: %d/%d %s, %.3g %s/s, about %s left (ends ~%s UTC)", self.desc, self.done, self.total,
                      plural(self.unit), rate, plural(self.unit), _clock(left / rate), _ends(left / rate))
      return
    if seconds < self.measure_s or units <= 0 or left <= 0:
      return
    rate = units / seconds
    self.estimated = left / rate
    self.last_line = t
    self.log.info("%s: %.3g %s/s measured over %d %s: about %s for the %d left (ends ~%s UTC)", self.desc,
                  rate, plural(self.unit), units, plural(self.unit), _clock(self.estimated), left,
                  _ends(self.estimated))


class _Bar(tqdm):
  """tqdm whose manual `update` also feeds a WorkEstimate."""

  def __init__(self, *args, estimate: WorkEstimate | None = None, **kwargs):
    super().__init__(*args, **kwargs)
    self.estimate = estimate

  def update(self, n=1):
    if self.estimate is not None:
      self.estimate.update(n)
    return super().update(n)


def _counted(iterable: Iterable[T], estimate: WorkEstimate) -> Iterator[T]:
  for item in iterable:
    yield item
    estimate.update(1)


def progress_enabled() -> bool:
  forced = os.environ.get("QGJAX_PROGRESS", "").strip().lower()
  if forced in ("1", "true", "yes", "on"):
    return True
  if forced in ("0", "false", "no", "off"):
    return False
  if os.environ.get("CI"):
    return False
  return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None,
             desc: str | None = None, unit: str = "it", initial: int = 0) -> tqdm:
  """A tqdm bar over `iterable` (or a manual bar with `.update(n)` when None).

  `initial` counts items already done by an earlier run of a resumed job, so the rate and
  ETA refer to what is left. With a known total (given or `len(iterable)`) the work and its
  estimated time go to the log (`WorkEstimate`).
  """
  if total is None and iterable is not None and hasattr(iterable, "__len__"):
    total = len(iterable)
  shown = progress_enabled()
  estimate = (WorkEstimate(total, initial, desc or "", unit, every_s=0.0 if shown else log_every_s())
              if total is not None else None)
  if iterable is not None and estimate is not None:
    iterable = _counted(iterable, estimate)
  return _Bar(iterable, total=total, desc=desc, unit=unit, initial=initial, estimate=None if iterable is not None
              else estimate, disable=not shown, dynamic_ncols=True, smoothing=0.1, file=sys.stderr)
