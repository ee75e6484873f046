"""One process per benchmarked system, driven over JSON lines: the benchmarks' isolation helper.

A benchmark that compares qgjax (XLA:CPU) with a PyTorch peer can run both in one Python
process, but the two then share one glibc heap and one page pool, and each disturbs the other
(measured in bench_infonce: after a sentence-transformers round, qgjax's next steps spent 1.7-3.3
s a step in the kernel zeroing re-faulted pages, against 0.2-0.5 s before it, so 3.0-3.7 s steps
took 3.6-5.3 s). `Worker` starts a system in its own interpreter, sends it one request at a time
and waits for its answer, so the systems never run at the same time and never share memory; the
driver alternates rounds between them as before.

  driver:  w = Worker("qgjax", [sys.executable, __file__, "--worker", "qgjax", ...]); w.request({"cmd": ...})
  worker:  serve(handle)    # handle(request dict) -> reply dict, for each request line on stdin

Replies are stdout lines that carry REPLY (after any unfinished line a library left); anything else
a library prints passes through to the driver's stderr. A worker that dies mid-request raises
RuntimeError in the driver.
"""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from typing import Callable, Sequence

REPLY = "@@bench-reply "


class Worker:
  """A system under test in its own process: `request(msg)` -> its reply (dicts, JSON-able)."""

  def __init__(self, name: str, argv: Sequence[str]):
    self.name = name  # the worker inherits this process's environment and working directory
    self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

  def request(self, msg: dict) -> dict:
    self.proc.stdin.write(json.dumps(msg) + "\n")
    self.proc.stdin.flush()
    for line in self.proc.stdout:
      at = line.find(REPLY)  # a library's unfinished stdout line may precede the reply on its line
      if at < 0:
        sys.stderr.write(line)
        continue
      if at:
        sys.stderr.write(line[:at] + "\n")
      reply = json.loads(line[at + len(REPLY):])
      if "error" in reply:
        raise RuntimeError(f"{self.name} worker failed on {msg.get('cmd')!r}:\n{reply['error']}")
      return reply
    raise RuntimeError(f"{self.name} worker exited (code {self.proc.wait()}) before answering {msg.get('cmd')!r}")

  def close(self) -> None:
    if self.proc.poll() is None:
      try:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
      except (OSError, subprocess.TimeoutExpired):
        self.proc.kill()


def serve(handle: Callable[[dict], dict]) -> None:
  """The worker's loop: one JSON request per stdin line -> one REPLY line (errors become {"error": ...})."""
  for line in sys.stdin:
    if not line.strip():
      continue
    try:
      reply = handle(json.loads(line))
    except Exception:  # noqa: BLE001  (the driver reports it with the worker's traceback)
      reply = {"error": traceback.format_exc()}
    sys.stdout.write(REPLY + json.dumps(reply) + "\n")
    sys.stdout.flush()
