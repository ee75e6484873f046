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


def huge_pages_first(argv) -> None:
  """A benchmark's first step when run as a program (argv None): glibc huge pages for XLA:CPU buffers,
  inherited by its worker processes (qgjax.host_allocator); QGJAX_HUGE_PAGES=0 turns them off."""
  if argv is None:
    import os

    from qgjax.host_allocator import OPT_IN, reexec_with_huge_pages
    os.environ.setdefault(OPT_IN, "1")
    reexec_with_huge_pages()


def qgjax_or_peer(qgjax_system: Callable, peer_system: Callable, args) -> Callable[[dict], object]:
  """`LocalSystem`'s builder for a qgjax-vs-peer benchmark: the peer (built from args and step 0's rows,
  msg["rows0"]) when the prepare request carries rows, else qgjax's system (built from args)."""
  return lambda msg: peer_system(args, msg["rows0"]) if "rows0" in msg else qgjax_system(args)


def prepare_both(systems: dict) -> tuple[dict, dict, dict]:
  """Prepares systems["qgjax"], then systems["st"] given qgjax's step-0 rows, one at a time (compiling
  never overlaps the peer); -> (qgjax info, peer info, rows by str(step))."""
  q_info = systems["qgjax"].request({"cmd": "prepare"})
  rows = q_info.pop("rows")
  return q_info, systems["st"].request({"cmd": "prepare", "rows0": rows["0"]}), rows


class LocalSystem:
  """A system built in this process behind the `Worker` interface: request(msg) -> reply.

  "prepare" builds it with `build(msg)` (an object with `info` and `run(steps, rows) -> (seconds, last
  loss)`) and returns its info; "run" times the steps (and their rows) asked for. A `--worker` process
  serves exactly this object (`serve(LocalSystem(build).request)`).
  """

  def __init__(self, build: Callable[[dict], object]):
    self.build, self.system = build, None

  def request(self, msg: dict) -> dict:
    if msg["cmd"] == "prepare":
      self.system = self.build(msg)
      return self.system.info
    if msg["cmd"] == "run":
      secs, loss = self.system.run(msg["steps"], msg["rows"])
      return {"seconds": secs, "loss": loss}
    raise ValueError(f"unknown request {msg['cmd']!r}")

  def close(self) -> None:
    pass


def alternate_rounds(systems: dict, plan: Sequence[Sequence[int]], rows: dict, per_step: int, unit: str,
                     order: Sequence[tuple[str, str]] = (("st", "sentence_transformers"), ("qgjax", "qgjax"))) -> dict:
  """Times each round of `plan` (step ids) on every system in `order` ((worker name, result key)), one
  system at a time, with the rows `rows[str(step)]` of each step; -> {result key: [per-round record]},
  each record holding `unit` = per_step x steps / seconds."""
  res: dict = {key: [] for _, key in order}
  for r, steps in enumerate(plan):
    for name, key in order:
      out = systems[name].request({"cmd": "run", "steps": list(steps), "rows": [rows[str(s)] for s in steps]})
      res[key].append({"round": r, "steps": len(steps), "seconds": round(out["seconds"], 3),
                       unit: round(len(steps) * per_step / out["seconds"], 2), "last_loss": round(out["loss"], 4)})
      print(f"round {r} {key}: {res[key][-1][unit]} {unit}", flush=True)
  return res
