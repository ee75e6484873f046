"""Launchers print exactly what they would run in dry-run mode, and validate their arguments."""

import os
import pathlib
import subprocess

import pytest

from qgjax.errors import ConfigError
from qgjax.parallel.distributed import maybe_initialize

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"


def _run(*args, env=None):
  return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True,
                        env={**{k: v for k, v in os.environ.items() if k != "QGJAX_HUGE_PAGES"}, **(env or {})},
                        timeout=60)


def test_multi_gpu_process_per_gpu_dry_run():
  r = _run(LAUNCH / "multi_gpu.sh", "--dry-run", "--mode", "process-per-gpu", "--gpus", "4", "--",
           "qgjax", "train", "--config", "configs/dpo.py")
  assert r.returncode == 0, r.stderr
  lines = [l for l in r.stdout.splitlines() if l.startswith("+ ")]
  assert len(lines) == 4
  for i, line in enumerate(lines):
    assert f"QGJAX_PROCESS_ID={i} " in line and f"QGJAX_LOCAL_DEVICE_IDS={i} " in line
    assert "QGJAX_NUM_PROCESSES=4" in line and line.endswith("train --config configs/dpo.py")
    assert "QGJAX_HUGE_PAGES=1 " in line  # the launchers opt in to the huge-page re-exec


def test_multi_gpu_two_hosts_process_ids_are_global():
  r = _run(LAUNCH / "multi_gpu.sh", "--dry-run", "--mode", "process-per-gpu", "--gpus", "2",
           "--hosts", "h1,h2", "--", "qgjax", "generate", "--config", "configs/generate.py")
  assert r.returncode == 0, r.stderr
  assert "ssh h2" in r.stdout and "QGJAX_PROCESS_ID=3" in r.stdout
  assert r.stdout.count("QGJAX_HUGE_PAGES=1 ") == 4  # also over ssh, where the environment does not travel
  assert "QGJAX_COORDINATOR_ADDRESS=h1:12355" in r.stdout


def test_tpu_pod_dry_run_runs_same_command_on_all_workers():
  r = _run(LAUNCH / "tpu_pod.sh", "--dry-run", "--name", "pod", "--zone", "z", "--create",
           "--accelerator", "v5litepod-64", "--", "qgjax", "generate", "--config", "configs/generate.py")
  assert r.returncode == 0, r.stderr
  assert "tpu-vm create pod --zone=z --accelerator-type=v5litepod-64" in r.stdout
  assert r.stdout.count("--worker=all") == 3
  assert "QGJAX_HUGE_PAGES=1 QGJAX_DISTRIBUTED=auto .venv/bin/qgjax generate --config configs/generate.py" in r.stdout


def test_slurm_dry_run_and_bad_usage():
  r = _run(LAUNCH / "slurm.sbatch", "qgjax", "evaluate", "--config", "configs/evaluate.py",
           env={"DRY_RUN": "1"})
  assert r.returncode == 0, r.stderr
  assert "srun --kill-on-bad-exit=1 env QGJAX_DISTRIBUTED=auto QGJAX_HUGE_PAGES=1 " in r.stdout
  off = _run(LAUNCH / "slurm.sbatch", "qgjax", "evaluate", "--config", "configs/evaluate.py",
             env={"DRY_RUN": "1", "QGJAX_HUGE_PAGES": "0"})
  assert off.returncode == 0 and "QGJAX_HUGE_PAGES=0 " in off.stdout, off.stderr  # the user's choice wins
  bad = _run(LAUNCH / "tpu_pod.sh", "--name", "x", "--zone", "z", "--", "python", "x.py")
  assert bad.returncode == 2 and "must start with 'qgjax'" in bad.stderr


def test_distributed_env_validation():
  assert maybe_initialize({}) is False
  with pytest.raises(ConfigError, match="QGJAX_NUM_PROCESSES"):
    maybe_initialize({"QGJAX_COORDINATOR_ADDRESS": "localhost:1"})
  with pytest.raises(ConfigError, match="expected 'auto'"):
    maybe_initialize({"QGJAX_DISTRIBUTED": "maybe"})
