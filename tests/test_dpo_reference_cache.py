"""The DPO task's stored reference log-probs are reused only for the inputs they were computed
from (model, pairs file, prompt, corpus), and those inputs are in the checkpoint fingerprint."""

from __future__ import annotations

import os

import pytest

from qgjax.config import build_config
from qgjax.train.lm_tasks import setup_dpo
from tiny_lm import make_tiny_lm

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "dpo.py:tiny")


@pytest.mark.slow
def test_reference_is_recomputed_when_the_prompt_changes(tmp_path):
  model = make_tiny_lm(str(tmp_path / "tiny_lm"))
  over = [("model.name", model), ("workdir", str(tmp_path / "dpo")), ("mesh", "[('data', 8)]"), ("batch_size", "8")]
  first = setup_dpo(build_config(CONFIG, over))
  assert first.info["reference"].startswith("computed into")
  again = setup_dpo(build_config(CONFIG, over))
  assert again.info["reference"].startswith("stored in") and again.fingerprint == first.fingerprint
  other = setup_dpo(build_config(CONFIG, over + [("prompt.max_doc_tokens", "32")]))
  assert other.info["reference"].startswith("computed into")   # not the stale one of the longer prompt
  assert other.fingerprint["prompt"] != first.fingerprint["prompt"]
  assert other.fingerprint["train_file"] == first.fingerprint["train_file"]
