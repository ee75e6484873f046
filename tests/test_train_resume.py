"""A `qgjax train` process killed with SIGKILL resumes at its last checkpoint and then produces
exactly the losses of an uninterrupted run (same batches by step, same restored state)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tiny_lm import make_tiny_lm
from xla_flags import cpu_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60


def _cmd(model_dir, workdir):
  return [sys.executable, "-m", "qgjax.cli", "train", "--config", os.path.join(REPO, "configs", "dpo.py") + ":tiny",
          f"--config.model.name={model_dir}", f"--config.workdir={workdir}", f"--config.num_steps={STEPS}",
          "--config.checkpoint.every=10", "--config.checkpoint.keep=2", "--config.log_every=1",
          "--config.eval_every=0", "--config.data.eval_fraction=0", "--config.dpo.reference=adapters_off",
          "--config.export.enabled=false", "--config.mesh=[('data', 2), ('fsdp', 1)]"]


def _env():
  env = dict(os.environ, XLA_FLAGS=cpu_devices(2), JAX_PLATFORMS="cpu",
             QGJAX_PROGRESS="0")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _losses(workdir):
  """step -> loss; each step logged once (a resume drops the records after the checkpoint it restores)."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      assert r["step"] not in out, f"step {r['step']} logged twice"
      out[r["step"]] = r["loss"]
  return out


def _logged_steps(path):
  if not os.path.isfile(path):
    return 0
  with open(path) as f:
    lines = [l for l in f.read().splitlines() if l.strip()]
  return json.loads(lines[-1])["step"] if lines else 0


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_losses(tmp_path):
  model = make_tiny_lm(str(tmp_path / "tiny_lm"))
  ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
  subprocess.run(_cmd(model, ref_dir), env=_env(), check=True, capture_output=True, timeout=600)
  reference = _losses(ref_dir)
  assert sorted(reference) == list(range(1, STEPS + 1))

  proc = subprocess.Popen(_cmd(model, run_dir), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  metrics = os.path.join(run_dir, "metrics.jsonl")
  deadline = time.time() + 600
  while _logged_steps(metrics) < 25 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  killed_at = _logged_steps(metrics)
  assert killed_at < STEPS
  ckpts = sorted(int(d) for d in os.listdir(os.path.join(run_dir, "checkpoints")) if d.isdigit())
  assert ckpts and ckpts[-1] <= killed_at

  out = subprocess.run(_cmd(model, run_dir), env=_env(), check=True, capture_output=True, text=True, timeout=600)
  summary = json.loads(out.stdout[out.stdout.index("{"):])
  assert summary["resumed_from"] == ckpts[-1] > 0
  resumed = _losses(run_dir)
  assert sorted(resumed) == list(range(1, STEPS + 1))
  for step in range(1, STEPS + 1):
    assert resumed[step] == reference[step], (step, resumed[step], reference[step])
  assert summary["checkpoints"][-1] == STEPS and len(summary["checkpoints"]) == 2   # keeps the last 2
