"""tools/bench_workers.py: requests and replies across a real worker process, its errors and its death."""

import os
import sys
import textwrap

import pytest

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
sys.path.insert(0, TOOLS)

from bench_workers import Worker  # noqa: E402

# A worker that prints noise on stdout (as libraries do), keeps state between requests, fails on
# request, and can die without answering.
WORKER = textwrap.dedent("""
  import os, sys
  sys.path.insert(0, sys.argv[1])
  from bench_workers import serve
  state = {"n": 0}
  def handle(msg):
    print("a library's chatter on stdout")
    sys.stdout.write("and an unfinished line ")
    if msg["cmd"] == "add":
      state["n"] += msg["x"]
      return {"n": state["n"], "pid": os.getpid()}
    if msg["cmd"] == "die":
      os._exit(3)
    raise ValueError("no such request: " + msg["cmd"])
  serve(handle)
""")


@pytest.fixture
def worker(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(WORKER)
  w = Worker("toy", [sys.executable, str(script), TOOLS])
  yield w
  w.close()


def test_replies_keep_worker_state_and_skip_other_output(worker, capfd):
  first = worker.request({"cmd": "add", "x": 2})
  second = worker.request({"cmd": "add", "x": 5})
  assert (first["n"], second["n"]) == (2, 7)
  assert first["pid"] == second["pid"] != os.getpid()  # one separate, long-lived process
  err = capfd.readouterr().err
  assert "chatter" in err and "and an unfinished line" in err  # passed through to the driver's stderr, not parsed


def test_a_failed_request_raises_with_the_workers_traceback_and_the_worker_lives_on(worker):
  with pytest.raises(RuntimeError, match="no such request: nope"):
    worker.request({"cmd": "nope"})
  assert worker.request({"cmd": "add", "x": 1})["n"] == 1


def test_a_worker_that_dies_mid_request_raises(worker):
  with pytest.raises(RuntimeError, match=r"exited \(code 3\) before answering 'die'"):
    worker.request({"cmd": "die"})
