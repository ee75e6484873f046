"""tools/carry_workdir.py: what a carried workdir keeps (a finished stage's models go, a running stage
keeps its latest complete checkpoint), and a training run carried midway goes on from that checkpoint."""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
from carry_workdir import carry  # noqa: E402


def _touch(path, text="x"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def test_finished_stages_lose_their_models_a_running_one_keeps_its_latest_checkpoint(tmp_path):
  src = tmp_path / "run"
  _touch(src / "cache" / "embeddings" / "e.npy")
  _touch(src / "retriever" / "STAGE_DONE.json", "{}")
  _touch(src / "retriever" / "export" / "model.safetensors")
  _touch(src / "retriever" / "checkpoints" / "8" / "state")
  for step in ("4", "8"):
    _touch(src / "align" / "checkpoints" / step / "state" / "d")
  _touch(src / "align" / "checkpoints" / "12.orbax-checkpoint-tmp-1733" / "state")
  _touch(src / "align" / "metrics.jsonl")
  out = carry(str(src), str(tmp_path / "copy"))
  assert sorted(out["left_out"]) == ["align/checkpoints/12.orbax-checkpoint-tmp-1733", "align/checkpoints/4",
                                     "cache", "retriever/checkpoints", "retriever/export"]
  copy = tmp_path / "copy"
  assert (copy / "align" / "checkpoints" / "8" / "state" / "d").is_file() and (copy / "align" / "metrics.jsonl").is_file()
  assert (copy / "retriever" / "STAGE_DONE.json").is_file() and not (copy / "retriever" / "checkpoints").exists()
  with pytest.raises(SystemExit, match="already exists"):
    carry(str(src), str(copy))


@pytest.mark.slow
def test_a_training_run_carried_midway_resumes_from_its_checkpoint(tmp_path):
  """`qgjax train` in <run>/align reading <run>/pairs, carried to another path: the same command there
  (paths under the new place) restores the checkpoint instead of refusing it or starting over."""
  import shutil

  from qgjax import cli
  from qgjax.train import demo
  from tiny_lm import make_tiny_lm

  lm = make_tiny_lm(str(tmp_path / "tiny_lm"))
  run = tmp_path / "run"
  os.makedirs(run / "pairs")
  shutil.copy(demo.demo_path("pairs"), run / "pairs" / "pairs.jsonl")

  def train(root):
    assert cli.main(["train", "--config", os.path.join(REPO, "configs", "dpo.py:tiny"), f"--config.model.name={lm}",
                     f"--config.workdir={root}/align", f"--config.data.train={root}/pairs/pairs.jsonl",
                     "--config.mesh=[('data', 8)]", "--config.batch_size=8", "--config.num_steps=3",
                     "--config.eval_every=3", "--config.checkpoint.every=3", "--config.export.enabled=False"]) == 0
    with open(root / "align" / "summary.json") as f:
      return json.load(f)

  assert train(run)["resumed_from"] == 0
  carry(str(run), str(tmp_path / "carried"))
  assert train(tmp_path / "carried")["resumed_from"] == 3
