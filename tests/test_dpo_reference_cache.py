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


@pytest.mark.slow
def test_common_prompt_prefix_runs_once_with_the_same_reference_and_loss(tmp_path):
  """dpo.share_prompt_prefix: the prompts' common start (chat opening + instruction) is split off
  and run once per batch; the reference log-probs and the first batch's loss are those of the
  whole prompts, and the fingerprint does not depend on it (a run resumes either way)."""
  import jax
  import numpy as np

  model = make_tiny_lm(str(tmp_path / "tiny_lm"))
  over = [("model.name", model), ("mesh", "[('data', 8)]"), ("batch_size", "8")]
  whole = setup_dpo(build_config(CONFIG, over + [("workdir", str(tmp_path / "a")),
                                                 ("dpo.share_prompt_prefix", "False")]))
  shared = setup_dpo(build_config(CONFIG, over + [("workdir", str(tmp_path / "b")),
                                                  ("dpo.share_prompt_prefix", "True")]))
  assert "shared_prefix_tokens" not in whole.info and shared.info["shared_prefix_tokens"] >= 16
  assert shared.fingerprint == whole.fingerprint
  b_whole, b_shared = whole.train.batch(0), shared.train.batch(0)
  n = shared.info["shared_prefix_tokens"]   # each prompt's rest: its whole length less the prefix
  np.testing.assert_array_equal(b_shared["prompt_mask"].sum(1), b_whole["prompt_mask"].sum(1) - n)
  np.testing.assert_allclose(b_shared["ref_chosen"], b_whole["ref_chosen"], rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(b_shared["ref_rejected"], b_whole["ref_rejected"], rtol=1e-4, atol=1e-3)
  loss = lambda s, b: jax.jit(s.loss_fn)(s.trainable, s.frozen, b)
  (l_w, m_w), (l_s, m_s) = loss(whole, b_whole), loss(shared, b_shared)
  np.testing.assert_allclose(float(l_s), float(l_w), rtol=1e-4)
  np.testing.assert_allclose(float(m_s["rewards/chosen"]), float(m_w["rewards/chosen"]), atol=1e-4)


@pytest.mark.slow
def test_length_alpha_is_in_the_fingerprint_only_when_set(tmp_path):
  """R-DPO's dpo.length_alpha is absent from the checkpoint fingerprint at 0 (plain DPO), so checkpoints
  written before the key existed resume; any other value is part of the run's identity."""
  model = make_tiny_lm(str(tmp_path / "tiny_lm"))
  over = [("model.name", model), ("workdir", str(tmp_path / "dpo")), ("mesh", "[('data', 8)]"), ("batch_size", "8")]
  plain = setup_dpo(build_config(CONFIG, over))
  assert "length_alpha" not in plain.fingerprint["dpo"] and "beta" in plain.fingerprint["dpo"]
  r_dpo = setup_dpo(build_config(CONFIG, over + [("dpo.length_alpha", "0.05")]))
  assert r_dpo.fingerprint["dpo"]["length_alpha"] == 0.05
  assert {k: v for k, v in r_dpo.fingerprint["dpo"].items() if k != "length_alpha"} == plain.fingerprint["dpo"]
