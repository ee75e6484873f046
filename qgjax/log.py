"""The package's log: modules write to `logging.getLogger(__name__)`, the CLI shows it on stderr.

`setup_logging(level)` installs one handler on the "qgjax" logger (once per process, so calling
it again only changes the level). Records read as

  qgjax pipeline: [3/16] pairs: running ...      (INFO and DEBUG: `qgjax <area>: message`)
  qgjax train: warning: optim.warmup_steps=...   (WARNING and up name their level)

where <area> is the part of the package that speaks: the first part of the logger's name after
`qgjax.`, `jobs.` and `methods.` (`qgjax.jobs.mine` -> mine, `qgjax.pipeline.runner` ->
pipeline, `qgjax.methods.aqe.expansion` -> aqe, `qgjax.train.optim` -> train); `qgjax` and
`qgjax.cli` print as plain `qgjax:`. The level is DEBUG with `qgjax -v`, else QGJAX_LOG_LEVEL (a
name such as `warning`, or a number), else INFO. Unless DEBUG, third-party noise is held back:
transformers' advisory warnings ("PyTorch was not found...", logged at its import on an install
without torch) and absl/orbax records below ERROR. jax's own warnings stay (e.g. a GPU found
but a CPU-only jaxlib installed). Progress bars are not log records (`qgjax.data.progress`).

  area_of(logger_name) -> str              'pipeline' for qgjax.pipeline.runner, '' for qgjax.cli
  resolve_level(verbose, environ) -> int   the level a run logs at
  setup_logging(level) -> int              the handler on "qgjax", the level set, third parties quieted
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Mapping

LOGGER = "qgjax"
LEVEL_ENV = "QGJAX_LOG_LEVEL"
# Containers whose next name part is the one a user knows (the stage, the method).
_CONTAINERS = ("jobs", "methods")
# Loggers of libraries whose chatter (orbax's checkpoint bookkeeping through absl) is held back.
QUIET_LIBRARIES = ("absl", "orbax")
NO_ADVICE = "TRANSFORMERS_NO_ADVISORY_WARNINGS"
_advice_silenced = False  # whether setup_logging set NO_ADVICE (so a later -v may take it back)


class _StderrHandler(logging.StreamHandler):
  """A StreamHandler that writes to whatever `sys.stderr` is when a record comes (a redirect,
  pytest's capture), not the stream of the moment it was made."""

  def __init__(self):
    logging.Handler.__init__(self)

  @property
  def stream(self):
    return sys.stderr


class _Formatter(logging.Formatter):
  def format(self, record: logging.LogRecord) -> str:
    area = area_of(record.name)
    head = f"qgjax {area}" if area else "qgjax"
    level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
    text = f"{head}: {level}{record.getMessage()}"
    if record.exc_info:
      text += "\n" + self.formatException(record.exc_info)
    return text


def area_of(name: str) -> str:
  """Logger name -> the area shown after `qgjax ` ('' for the package itself and the CLI)."""
  parts = name.split(".")[1:] if name.split(".")[0] == LOGGER else [name]
  while len(parts) > 1 and parts[0] in _CONTAINERS:
    parts = parts[1:]
  return "" if not parts or parts[0] == "cli" else parts[0]


def resolve_level(verbose: bool = False, environ: Mapping[str, str] | None = None) -> int:
  """DEBUG when `verbose`, else QGJAX_LOG_LEVEL ('debug', 'WARNING', '30', ...), else INFO."""
  if verbose:
    return logging.DEBUG
  text = (os.environ if environ is None else environ).get(LEVEL_ENV, "").strip()
  if not text:
    return logging.INFO
  if text.lstrip("-").isdigit():
    return int(text)
  level = logging.getLevelName(text.upper())
  if not isinstance(level, int):
    from qgjax.errors import ConfigError

    raise ConfigError(f"{LEVEL_ENV}={text!r} is not a log level; use debug, info, warning, error or a number")
  return level


class _NotQgjax(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.name == LOGGER or record.name.startswith(LOGGER + "."))


def _third_party_handler() -> None:
  """Other libraries' warnings on stderr through a root handler that skips qgjax's own records
  (they have the qgjax handler). Without it absl's first log call (orbax logs at import) runs
  `logging.basicConfig()`, whose root handler then prints every qgjax record a second time."""
  if any(isinstance(h, _StderrHandler) for h in logging.root.handlers):
    return
  handler = _StderrHandler()
  handler.setLevel(logging.WARNING)
  handler.addFilter(_NotQgjax())
  handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
  logging.root.addHandler(handler)


def setup_logging(level: int = logging.INFO) -> int:
  """Shows qgjax's records at `level` and up on stderr; returns `level`."""
  logger = logging.getLogger(LOGGER)
  if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
  logger.setLevel(level)
  _third_party_handler()
  quiet = level > logging.DEBUG
  for name in QUIET_LIBRARIES:
    logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.NOTSET)
  # Read by transformers when it logs the advice (at its import, so this comes before it).
  global _advice_silenced
  if quiet and NO_ADVICE not in os.environ:
    os.environ[NO_ADVICE], _advice_silenced = "1", True
  elif not quiet and _advice_silenced:
    os.environ.pop(NO_ADVICE, None)
    _advice_silenced = False
  return level
