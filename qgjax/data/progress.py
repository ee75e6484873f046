"""Progress bars for long jobs (items/s and ETA), quiet where nobody watches.

A bar is shown when stderr is a terminal and `CI` is unset. `QGJAX_PROGRESS=1` forces bars on
(e.g. in a log file), `QGJAX_PROGRESS=0` forces them off.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


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
  ETA refer to what is left.
  """
  return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial,
              disable=not progress_enabled(), dynamic_ncols=True, smoothing=0.1,
              file=sys.stderr)
