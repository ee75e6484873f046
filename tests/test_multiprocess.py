"""Two processes joined with `jax.distributed.initialize` on localhost (2 CPU devices each, a
4-device global mesh) run `qgjax train` (DPO, InfoNCE retriever) and `qgjax generate`; the
losses, eval metrics, exports and generated records equal one process with 4 devices.

Cross-process collectives on CPU use gloo (jax 0.10's default `jax_cpu_collectives_implementation`).
The mesh keeps "data" across the processes and "fsdp" inside each: with an fsdp axis spanning both
processes AND 2 devices per process ([("fsdp", 4)]) the first DPO train step deadlocks in XLA:CPU
(both processes wait on its result); with 1 device per process ([("fsdp", 2)]) it runs and gives
the same numbers. A toy FSDP gradient step with the 4-device mesh runs, so the cause is narrower.
Each worker records every batch it hands to `put_batch`: each host passes only its half of the
rows, the global batch (`jax.make_array_from_process_local_data`) holds them on its own devices,
and the two halves together are the single process's batch.

Worker: `python tests/test_multiprocess.py WORKDIR RUN_NAME` (QGJAX_* variables set by the test).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from xla_flags import cpu_devices   # both runs compile fast (the test is mostly compiles)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CONFIGS = os.path.join(REPO, "configs")
MESH = "--config.mesh=[('data', 2), ('fsdp', 2)]"  # data outermost: it spans the processes


# ------------------------------------------------------------------------------------------------
# Worker side (one per process).

def _record_put_batch(log: list) -> None:
  """Wraps qgjax.parallel.sharding.put_batch (before anything imports it) to log, per call, a
  digest of each local row and the global rows this process's devices hold, checking that
  they hold exactly the rows it passed, in order."""
  import numpy as np

  from qgjax.parallel import sharding

  real = sharding.put_batch

  def put_batch(local_batch, mesh, rules):
    out = real(local_batch, mesh, rules)
    names = sorted(local_batch)
    rows = len(local_batch[names[0]])
    digests = [hashlib.sha1(b"".join(np.ascontiguousarray(local_batch[k][i]).tobytes() for k in names)).hexdigest()[:12]
               for i in range(rows)]
    arr = out[names[0]]
    held = {}
    for shard in arr.addressable_shards:
      start = shard.index[0].start or 0
      held.update(zip(range(start, start + shard.data.shape[0]), np.asarray(shard.data)))
    positions = sorted(held)
    assert len(positions) == rows, (positions, rows)
    np.testing.assert_array_equal(np.stack([held[i] for i in positions]), np.asarray(local_batch[names[0]]))
    log.append({"rows": digests, "positions": positions, "global_rows": int(arr.shape[0])})
    return out

  sharding.put_batch = put_batch


def worker(workdir: str, run: str, tasks: str = "dpo,retriever,generate") -> None:
  log: list = []
  _record_put_batch(log)
  import jax

  from qgjax import cli
  from qgjax.parallel.distributed import maybe_initialize

  assert maybe_initialize() == ("QGJAX_COORDINATOR_ADDRESS" in os.environ)
  out = os.path.join(workdir, run)
  pid, n_proc = jax.process_index(), jax.process_count()
  common = [MESH, "--config.checkpoint.async_save=true", "--config.log_every=1"]
  dpo = ["train", "--config", os.path.join(CONFIGS, "dpo.py:tiny"), f"--config.model.name={workdir}/tiny_lm",
         f"--config.workdir={out}/dpo", "--config.batch_size=8", "--config.num_steps=3", "--config.eval_every=3",
         "--config.checkpoint.every=2", *common]
  ret = ["train", "--config", os.path.join(CONFIGS, "retriever.py:tiny"), f"--config.model.name={workdir}/tiny_bert",
         f"--config.workdir={out}/retriever", f"--config.data.train={workdir}/tuples.jsonl", "--config.batch_size=8",
         "--config.num_steps=3", "--config.checkpoint.every=3", "--config.optim.lr=1e-3", *common]
  gen = ["generate", "--config", os.path.join(CONFIGS, "generate.py:mode=plain"),
         f"--config.model.name={workdir}/tiny_lm", f"--config.output_dir={out}/generate", "--config.data.limit=10",
         "--config.batch_size=4", "--config.buckets=[64,128,160]", "--config.sampling.num_samples=3",
         "--config.sampling.max_new_tokens=6", "--config.sampling.stop_at_newline=false",
         "--config.postprocess.drop_copied=false", "--config.log_every_s=0", "--config.print_examples=0"]
  report = {"process": pid, "processes": n_proc, "devices": jax.device_count(), "local_devices": jax.local_device_count()}
  for name, argv in (("dpo", dpo), ("retriever", ret), ("generate", gen)):
    if name not in tasks.split(","):
      continue
    start = len(log)
    t0 = time.perf_counter()
    assert cli.main(argv) == 0, name
    report[name] = {"batches": log[start:], "seconds": round(time.perf_counter() - t0, 1)}
  with open(os.path.join(out, f"report-{pid}.json"), "w") as f:
    json.dump(report, f)


# ------------------------------------------------------------------------------------------------
# Test side.

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir: str, run: str, num_processes: int, devices_each: int) -> list[tuple[str, subprocess.Popen]]:
  """Starts the processes of one run (a coordinator on a free localhost port when > 1)."""
  port = _free_port()
  procs = []
  for i in range(num_processes):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QGJAX_")}
    env.update(XLA_FLAGS=cpu_devices(devices_each),
               JAX_PLATFORMS="cpu", QGJAX_PROGRESS="0", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               PYTHONPATH=REPO)
    if num_processes > 1:
      env.update(QGJAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", QGJAX_NUM_PROCESSES=str(num_processes),
                 QGJAX_PROCESS_ID=str(i))
    log_path = os.path.join(workdir, f"{run}-{i}.log")
    with open(log_path, "w") as log:
      procs.append((log_path, subprocess.Popen([sys.executable, __file__, workdir, run], env=env, cwd=REPO,
                                               stdout=log, stderr=subprocess.STDOUT)))
  return procs


def _wait_all(procs: list[tuple[str, subprocess.Popen]], timeout_s: float) -> None:
  """Waits for every process; on a failure or the timeout kills the rest (always, in `finally`)."""
  deadline = time.time() + timeout_s
  try:
    while any(p.poll() is None for _, p in procs):
      if any(p.poll() not in (None, 0) for _, p in procs) or time.time() > deadline:
        break
      time.sleep(0.2)
  finally:
    killed = set()
    for i, (_, p) in enumerate(procs):
      if p.poll() is None:
        p.kill()
        killed.add(i)
      p.wait()
  # the process that failed first on its own explains the others (killed here, or timed out waiting)
  for i, (log_path, p) in sorted(enumerate(procs), key=lambda e: (e[0] in killed, e[0])):
    if p.returncode != 0:
      with open(log_path) as f:
        raise AssertionError(f"{log_path} exited with {p.returncode}:\n{f.read()[-4000:]}")


def _tuples(path: str) -> None:
  from qgjax.data import demo_dir

  recs = [json.loads(line) for line in open(demo_dir() / "sample_queries.jsonl")]
  docs = sorted({r["doc_id"] for r in recs})
  with open(path, "w") as f:
    for r in recs:
      negs = [docs[(docs.index(r["doc_id"]) + j) % len(docs)] for j in (1, 2)]
      f.write(json.dumps({"doc_id": r["doc_id"], "sample_idx": r["sample_idx"], "query": r["query"],
                          "pos_id": r["doc_id"], "neg_ids": negs}) + "\n")


def _metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f]


def _compare_metrics(one: str, two: str) -> None:
  import numpy as np

  a, b = _metrics(one), _metrics(two)
  assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) >= 3
  for ra, rb in zip(a, b):
    for k in ra:
      if k.startswith(("loss", "eval/", "rewards/", "grad_norm")) or k in ("accuracy",):
        np.testing.assert_allclose(rb[k], ra[k], atol=1e-5, rtol=1e-5, err_msg=f"{two} step {ra['step']} {k}")
  assert len({round(r["loss"], 4) for r in a}) > 1, a  # the loss moves: the steps really train


def _compare_batches(one: list[dict], halves: list[list[dict]]) -> None:
  """Each host passed only its slice (half the rows); placed where its devices hold them, the
  halves make the single process's global batch, row for row."""
  assert len(one) > 0 and all(len(h) == len(one) for h in halves)
  for k, ref in enumerate(one):
    parts = [h[k] for h in halves]
    assert ref["positions"] == list(range(ref["global_rows"]))
    glob = [None] * ref["global_rows"]
    for p in parts:
      assert p["global_rows"] == ref["global_rows"] and len(p["rows"]) * len(parts) == ref["global_rows"]
      for pos, digest in zip(p["positions"], p["rows"]):
        assert glob[pos] is None
        glob[pos] = digest
    assert glob == ref["rows"], f"batch {k}"


def _records(*dirs: str) -> list[dict]:
  from qgjax.data.sharded_writer import iter_sharded, read_manifest

  assert all(read_manifest(d)["complete"] for d in dirs)
  return sorted((r for d in dirs for r in iter_sharded(d)), key=lambda r: (r["doc_id"], r["sample_idx"]))


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
  import numpy as np
  from safetensors.numpy import load_file

  from tiny_lm import make_tiny_bert, make_tiny_lm

  t0 = time.perf_counter()
  work = str(tmp_path)
  make_tiny_lm(os.path.join(work, "tiny_lm"))
  make_tiny_bert(os.path.join(work, "tiny_bert"))
  _tuples(os.path.join(work, "tuples.jsonl"))
  procs = []
  try:  # both runs at once: the 2-process run waits in collectives, the reference fills the cores
    procs = _start(work, "one", 1, 4) + _start(work, "two", 2, 2)
  finally:
    _wait_all(procs, timeout_s=300)
  reports = {r: [json.load(open(os.path.join(work, r, f"report-{i}.json"))) for i in range(n)]
             for r, n in (("one", 1), ("two", 2))}
  assert [(r["processes"], r["devices"], r["local_devices"]) for r in reports["two"]] == [(2, 4, 2)] * 2
  assert (reports["one"][0]["processes"], reports["one"][0]["devices"]) == (1, 4)

  for task in ("dpo", "retriever"):
    _compare_metrics(os.path.join(work, "one", task, "metrics.jsonl"), os.path.join(work, "two", task, "metrics.jsonl"))
    _compare_batches(reports["one"][0][task]["batches"], [r[task]["batches"] for r in reports["two"]])
    s1, s2 = (json.load(open(os.path.join(work, r, task, "summary.json"))) for r in ("one", "two"))
    assert s1["checkpoints"] == s2["checkpoints"] and s2["mesh"] == {"data": 2, "fsdp": 2}
  # The DPO export (LoRA merged, gathered across hosts) has the same weights.
  e1, e2 = (load_file(os.path.join(work, r, "dpo", "export", "model.safetensors")) for r in ("one", "two"))
  assert sorted(e1) == sorted(e2)
  for k in e1:
    np.testing.assert_allclose(e2[k], e1[k], atol=1e-5, err_msg=k)

  # generate: each process wrote its own part; their union is the single process's output.
  parts = sorted(p for p in os.listdir(os.path.join(work, "two", "generate")) if p.startswith("process-"))
  assert parts == ["process-00000", "process-00001"]
  one = _records(os.path.join(work, "one", "generate"))
  two = _records(*(os.path.join(work, "two", "generate", p) for p in parts))
  halves = [{r["doc_id"] for r in _records(os.path.join(work, "two", "generate", p))} for p in parts]
  assert not halves[0] & halves[1] and len(halves[0]) == len(halves[1]) == 5   # interleaved slices
  assert len(one) >= 20 and len({r["doc_id"] for r in one}) == 10
  assert [(r["doc_id"], r["sample_idx"], r["query"]) for r in two] == [(r["doc_id"], r["sample_idx"], r["query"])
                                                                         for r in one]
  np.testing.assert_allclose([r["logprob"] for r in two], [r["logprob"] for r in one], atol=1e-4)
  print({r: {t: rep[0][t]["seconds"] for t in ("dpo", "retriever", "generate")} for r, rep in reports.items()},
        f"total {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
  sys.path.insert(0, HERE)
  worker(*sys.argv[1:])
