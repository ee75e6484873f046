"""The done log of a resumable generation job: `done_ids.txt`, one line per finished item.

A line is an id (a JSON string, written by older runs) or `[id, tokens generated for it]`. The
ids of a batch are appended after its records are flushed, so an id listed here has every record
in the output; a torn last line (a kill in the middle of a write) is not done and is cut before
the next run appends.

  entries = read_done_entries(out_dir)      # complete lines, parsed
  done_ids(entries), done_tokens(entries)   # set of ids; tokens summed over every run
  log = DoneLog(out_dir); log.add(ids, tokens); log.close()
"""

from __future__ import annotations

import json
import pathlib

from qgjax.data import storage
from qgjax.data.safe_files import open_append, open_no_follow

DONE_FILE = "done_ids.txt"


def read_done_entries(out_dir: str | pathlib.Path) -> list:
  """The complete lines of `out_dir`/done_ids.txt, parsed (an id, or [id, tokens])."""
  path = storage.as_path(out_dir) / DONE_FILE
  if not path.is_file():
    return []
  lines = path.read_text(encoding="utf-8").split("\n")
  return [json.loads(line) for line in lines[:-1] if line]  # last element: "" or a torn line


def done_ids(entries: list) -> set[str]:
  """The ids of done-log entries."""
  return {e[0] if isinstance(e, list) else e for e in entries}


def done_tokens(entries: list) -> int:
  """Tokens generated for the done ids, summed over every run that logged them."""
  return sum(int(e[1]) for e in entries if isinstance(e, list))


class DoneLog:
  """Appends finished ids to `out_dir`/done_ids.txt (cutting a torn last line first). On gs:// each
  `add` uploads the whole log again (one atomic object; GCS has no append)."""

  def __init__(self, out_dir: str | pathlib.Path):
    path = storage.as_path(out_dir) / DONE_FILE
    if path.is_file() and not storage.is_remote(path):
      data = path.read_bytes()
      cut = data.rfind(b"\n") + 1
      if cut < len(data):
        with open_no_follow(path, "r+b") as f:
          f.truncate(cut)
    self._f = open_append(path, "a")

  def add(self, ids: list[str], tokens: list[int] | None = None) -> None:
    """Marks `ids` done (with the tokens generated for each, when given) and flushes."""
    entries = ids if tokens is None else [[i, int(t)] for i, t in zip(ids, tokens)]
    self._f.write("".join(json.dumps(e) + "\n" for e in entries))
    self._f.flush()

  def close(self) -> None:
    self._f.close()
