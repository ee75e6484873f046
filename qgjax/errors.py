"""Error types that the CLI turns into a one-line message (no traceback) and exit code 2."""

from __future__ import annotations


class QgjaxError(Exception):
  """Base class for user-facing errors: bad input, bad config, mismatched checkpoints."""


class ConfigError(QgjaxError):
  """A config file or override is wrong (unknown key, bad value, missing get_config)."""


class InputError(QgjaxError):
  """Bad input data; names the file, the line (1-based) and the field where known."""

  def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
               field: str | None = None):
    self.path, self.line, self.field = path, line, field
    where = []
    if path is not None:
      where.append(str(path) + (f":{line}" if line is not None else ""))
    if field is not None:
      where.append(f"field '{field}'")
    super().__init__((", ".join(where) + ": " if where else "") + message)


class CheckpointMismatchError(QgjaxError):
  """A checkpoint does not fit the model: lists missing, unexpected and mis-shaped tensors."""
