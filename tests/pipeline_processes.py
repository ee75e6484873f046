"""Test helpers: `qgjax pipeline` through the CLI on 1 or P processes joined with
`jax.distributed` on localhost (1 CPU device each), a snapshot of a finished workdir, and the
comparison of two workdirs' outputs (every stage's records read as one output, in order; the
jsonl files, evaluate metrics, training metrics and the report's numbers; floats to 1e-5).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time

from xla_flags import cpu_devices   # every run here (1 or P processes) compiles fast

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5   # absolute and relative, for floats (cross-process reductions may reorder sums)
# keys whose values are wall times, rates or where a run happened: they differ between any two runs
_PLACE = {"finished_at", "peak_rss_mb", "mesh", "devices", "pid", "host"}


def _volatile(key: str) -> bool:
  return key in _PLACE or "seconds" in key or "time" in key or key.endswith("_s")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_pipeline(spec: str, overrides: list[tuple[str, str]], processes: int = 1, timeout_s: float = 600) -> dict:
  """`qgjax pipeline --config spec` with `overrides` on `processes` processes of one CPU device each
  -> the result process 0 prints. A process that fails stops the others (they would wait in a
  collective until the coordinator's timeout); its log tail is the assertion message."""
  port = _free_port()
  cmd = [sys.executable, "-m", "qgjax.cli", "pipeline", "--config", spec] + [f"--config.{k}={v}" for k, v in overrides]
  procs = []
  for i in range(processes):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QGJAX_")}
    env.update(XLA_FLAGS=cpu_devices(1), JAX_PLATFORMS="cpu", QGJAX_PROGRESS="0",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    if processes > 1:
      env.update(QGJAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", QGJAX_NUM_PROCESSES=str(processes),
                 QGJAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  deadline = time.time() + timeout_s
  outs: dict[int, tuple[str, str]] = {}
  try:
    while len(outs) < processes:
      for i, p in enumerate(procs):
        if i not in outs and p.poll() is not None:
          outs[i] = p.communicate()
          if p.returncode != 0:
            raise AssertionError(f"process {i} of {processes} exited with {p.returncode}:\n{outs[i][1][-4000:]}")
      if time.time() > deadline:
        raise AssertionError(f"qgjax pipeline on {processes} processes ran past {timeout_s} s")
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  lines = outs[0][0].splitlines()
  start = max(i for i, line in enumerate(lines) if line == "{")  # the CLI prints the result last
  return json.loads("\n".join(lines[start:]))


def snapshot(workdir: pathlib.Path, to: pathlib.Path) -> pathlib.Path:
  """A copy of a finished workdir (links kept as links), for comparisons after later tests change it."""
  shutil.copytree(workdir, to, symlinks=True)
  return to


def _paths_as(value, old: str, new: str):
  """`value` with the workdir path `old` written as `new` in every string."""
  if isinstance(value, str):
    return value.replace(old, new)
  if isinstance(value, dict):
    return {k: _paths_as(v, old, new) for k, v in value.items()}
  if isinstance(value, list):
    return [_paths_as(v, old, new) for v in value]
  return value


def _without_volatile(value):
  if isinstance(value, dict):
    return {k: _without_volatile(v) for k, v in value.items() if not _volatile(k)}
  if isinstance(value, list):
    return [_without_volatile(v) for v in value]
  return value


def _without_noise_accuracy(row: dict) -> dict:
  """A training metrics row without a DPO reward accuracy whose mean margin is within TOLERANCE of 0:
  before the policy moves (lr 0 at step 1) chosen and rejected rewards are float noise (~1e-7), and
  the fraction of positive margins is a step function of that noise (0.0 on one run, 0.25 on another)."""
  out = dict(row)
  for key in row:
    if key.endswith("rewards/accuracy"):
      margin = row.get(key[: -len("accuracy")] + "margin")
      if margin is not None and abs(margin) < TOLERANCE:
        out.pop(key)
  return out


def differences(a, b, where: str = "") -> list[str]:
  """Where `a` and `b` differ: structure, strings and integers exactly, floats to TOLERANCE."""
  if isinstance(a, dict) and isinstance(b, dict):
    if set(a) != set(b):
      return [f"{where}: keys {sorted(set(a) ^ set(b))}"]
    return [d for k in a for d in differences(a[k], b[k], f"{where}.{k}")]
  if isinstance(a, list) and isinstance(b, list):
    if len(a) != len(b):
      return [f"{where}: {len(a)} != {len(b)} items"]
    return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
  if isinstance(a, float) or isinstance(b, float):
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    if numbers and (math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE) or (math.isnan(a) and math.isnan(b))):
      return []
    return [f"{where}: {a!r} != {b!r}"]
  return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def sharded_outputs(workdir: pathlib.Path) -> list[pathlib.Path]:
  """Every stage's sharded JSONL output (a directory with a manifest, or with process-<i> parts),
  relative to `workdir` (the shared embedding cache left out)."""
  from qgjax.data.sharded_writer import read_manifest
  from qgjax.errors import InputError

  found = set()
  for manifest in workdir.rglob("manifest.json"):
    d = manifest.parent
    try:
      read_manifest(d)
    except InputError:
      continue   # another format (an embedding store)
    root = d.parent if d.name.startswith("process-") else d
    rel = root.relative_to(workdir)
    if rel.parts[0] != "cache":
      found.add(rel)
  return sorted(found)


def compare_workdirs(one: pathlib.Path, one_path: str, two: pathlib.Path, two_path: str) -> dict[str, int]:
  """Asserts that workdir `two` (written at `two_path`) holds the outputs of `one` (a snapshot of
  a workdir written at `one_path`) -> how many items each comparison covered, by output."""
  from qgjax.data.records import iter_records

  def load_jsonl(path):
    with open(path) as f:
      return [json.loads(line) for line in f if line.strip()]

  def same(a, b, what):
    diffs = differences(_without_volatile(a), _without_volatile(_paths_as(b, two_path, one_path)), what)
    assert not diffs, f"{what}: {len(diffs)} differences, e.g. " + "; ".join(diffs[:5])

  covered = {}
  outputs = sharded_outputs(one)
  assert outputs == sharded_outputs(two)
  for rel in outputs:
    a = [r for _, _, r in iter_records(one / rel)]
    b = [r for _, _, r in iter_records(two / rel)]
    same(a, b, str(rel))
    covered[str(rel)] = len(a)
  for path in sorted(one.rglob("*")):
    rel = path.relative_to(one)
    if rel.parts[0] in ("cache", "report") or not path.is_file() or re.fullmatch(r"shard-\d+\.jsonl", path.name):
      continue
    if path.name == "metrics.jsonl":   # a training stage's: a row per logged step
      a, b = ([_without_noise_accuracy(r) for r in load_jsonl(p)] for p in (path, two / rel))
      for ra, rb in zip(a, b):   # an accuracy compared only when both runs' margins are clear of noise
        for key in set(ra) ^ set(rb):
          ra.pop(key, None), rb.pop(key, None)
    elif path.suffix == ".jsonl":
      a, b = load_jsonl(path), load_jsonl(two / rel)
    elif path.name == "metrics.json":   # an evaluate stage's: its systems' numbers
      a, b = (json.loads(p.read_text()) for p in (path, two / rel))
      a, b = {k: a[k] for k in ("systems", "num_queries", "measures")}, {k: b[k] for k in ("systems", "num_queries", "measures")}
    else:
      continue
    same(a, b, str(rel))
    covered[str(rel)] = len(a)
  a, b = (json.loads((d / "report" / "report.json").read_text()) for d in (one, two))
  for r in (a, b):   # tables of wall times ("Stage times", AQE's "Test-time cost") differ between runs; the
    # alignment table repeats metrics.jsonl's eval rows, compared above except accuracies within float noise
    r["tables"] = [t for t in r.get("tables", []) if "time" not in t.get("title", "").lower()
                   and not t.get("title", "").startswith("Alignment")]
  same(a, b, "report.json")
  covered["report.json"] = len(a["systems"])
  return covered


def parts_of(workdir: pathlib.Path, rel: str) -> list[int]:
  """Records in each process-<i> part of the sharded output `rel` (in process order)."""
  from qgjax.data.records import count_input, sharded_parts
  return [count_input(p) for p in sharded_parts(workdir / rel)]
