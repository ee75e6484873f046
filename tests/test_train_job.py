"""`qgjax train` end to end on tiny models: DPO (precomputed reference), RSFT, RSFT+DPO, ReadQG;
the reference pass, the LoRA-merged export, and the user-facing errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qgjax import cli
from qgjax.train import demo
from tiny_lm import make_tiny_lm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
MESH = "--config.mesh=[('data', 2), ('fsdp', 4)]"


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
  return make_tiny_lm(str(tmp_path_factory.mktemp("models") / "tiny_lm"))


def _train(config, workdir, *overrides):
  rc = cli.main(["train", "--config", os.path.join(CONFIGS, config), f"--config.workdir={workdir}", MESH,
                 "--config.batch_size=8", *overrides])
  return rc


def _summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def test_demo_files_are_current():
  for name, records in demo.demo_records().items():
    with open(demo.demo_path(name)) as f:
      assert [json.loads(l) for l in f] == records


@pytest.mark.slow
def test_dpo_job_reference_pass_and_export(tiny_lm, tmp_path):
  from qgjax.models.registry import load_decoder
  from qgjax.train import examples as ex
  from qgjax.train.logprobs import completion_logprobs, decoder_fns

  work = str(tmp_path / "dpo")
  assert _train("dpo.py:tiny", work, f"--config.model.name={tiny_lm}", "--config.num_steps=6",
                "--config.eval_every=3", "--config.checkpoint.every=3") == 0
  s = _summary(work)
  assert s["steps"] == 6 and s["mesh"] == {"data": 2, "fsdp": 4}
  assert (s["dtype"], s["attention"]) == ("float32", "xla")   # "auto" on a CPU host
  assert s["reference"].startswith("computed into") and s["train_pairs"] + s["eval_pairs"] == 35
  assert 3 in s["checkpoints"] and 6 in s["checkpoints"]
  assert np.isfinite(s["final"]["loss"]) and "eval/rewards/accuracy" in s["final"]
  # best_step is the step whose eval metric is best (checkpoint.best_metric / best_mode of the
  # config) as logged in metrics.jsonl; the two evals differ, so the worst one would not pass.
  from qgjax.config import build_config
  cfg = build_config(os.path.join(CONFIGS, "dpo.py:tiny"))
  metric, mode = cfg.checkpoint.best_metric, cfg.checkpoint.best_mode
  assert (metric, mode) == ("eval/loss", "min")
  with open(os.path.join(work, "metrics.jsonl")) as f:
    evals = {r["step"]: r[metric] for r in map(json.loads, f) if metric in r}
  assert sorted(evals) == [3, 6] and evals[3] != evals[6], evals
  assert s["best_step"] == (min if mode == "min" else max)(evals, key=evals.get), (s["best_step"], evals)

  # The stored reference log-probs are the initial model's: recompute two pairs one by one.
  model, params, tok = load_decoder(tiny_lm)
  fns = decoder_fns(model, {"params": params})
  from qgjax.train.lm_tasks import _prompts
  from qgjax.train.generator import Generator
  prompts = _prompts(Generator(model, tok, None, None, None, None, "full"), cfg)
  stored = [r for _, r in ex.read_jsonl(os.path.join(work, "pairs_with_ref.jsonl"))]
  for rec in stored[:2]:
    p = np.asarray([prompts.ids(rec, "x", 1)], np.int32)
    for field in ("chosen", "rejected"):
      c = np.asarray(ex.tokenize_completions(tok, [rec[field]]), np.int32)
      lp = completion_logprobs(fns, p, np.ones_like(p, bool), c, np.ones_like(c, bool))
      np.testing.assert_allclose(rec[f"ref_{field}"], float(lp.total[0]), rtol=1e-4, atol=1e-3)

  # The export is a loadable HF directory whose weights moved away from the base model.
  exp_model, exp_params, _ = load_decoder(s["export"])
  moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max())
           for a, b in zip(jax.tree.leaves(exp_params), jax.tree.leaves(params))]
  assert max(moved) > 0 and exp_model.config.num_layers == model.config.num_layers

  # Running the finished job again resumes at the end and trains nothing more.
  assert _train("dpo.py:tiny", work, f"--config.model.name={tiny_lm}", "--config.num_steps=6",
                "--config.eval_every=3", "--config.checkpoint.every=3") == 0
  assert _summary(work)["resumed_from"] == 6


def test_reference_pass_resumes_after_a_kill(tiny_lm, tmp_path, monkeypatch):
  """A reference pass stopped after 3 of its batches goes on from batch 3 (saved progress) and stores
  exactly the values of an uninterrupted pass; the progress file goes once the values are stored."""
  from qgjax.config import build_config
  from qgjax.train import examples as ex
  from qgjax.train import lm_tasks

  def config(workdir):
    return build_config(os.path.join(CONFIGS, "dpo.py:tiny"),
                        [("model.name", tiny_lm), ("workdir", workdir), ("mesh", "[('data', 2), ('fsdp', 4)]"),
                         ("reference_batch_size", "8")])

  def stored(workdir):
    return [(r["ref_chosen"], r["ref_rejected"]) for _, r in ex.read_jsonl(os.path.join(workdir, "pairs_with_ref.jsonl"))]

  whole = str(tmp_path / "whole")
  lm_tasks.setup_dpo(config(whole))
  want = stored(whole)
  assert len(want) == 35   # 5 batches of 8

  make_loader, batches = lm_tasks._loader, []

  class Stopping:   # the reference pass's loader, killed when it reaches batch 3
    def __init__(self, loader, stop_at):
      self.loader, self.stop_at = loader, stop_at

    def __getattr__(self, name):
      return getattr(self.loader, name)

    def batch(self, s):
      if s == self.stop_at:
        raise KeyboardInterrupt
      batches.append(s)
      return self.loader.batch(s)

  def loader_stopping_at(stop_at):
    def make(columns, spec, cfg, *, shuffle, batch_size=None):
      loader = make_loader(columns, spec, cfg, shuffle=shuffle, batch_size=batch_size)
      return Stopping(loader, stop_at) if batch_size == 8 else loader   # not the training loaders
    return make

  monkeypatch.setattr(lm_tasks, "REFERENCE_SAVE_EVERY_S", 0.0)
  killed = str(tmp_path / "killed")
  monkeypatch.setattr(lm_tasks, "_loader", loader_stopping_at(3))
  with pytest.raises(KeyboardInterrupt):
    lm_tasks.setup_dpo(config(killed))
  partial = os.path.join(killed, "pairs_with_ref.partial.npz")
  assert batches == [0, 1, 2] and os.path.isfile(partial)
  assert not os.path.exists(os.path.join(killed, "pairs_with_ref.jsonl"))

  batches.clear()
  monkeypatch.setattr(lm_tasks, "_loader", loader_stopping_at(None))
  lm_tasks.setup_dpo(config(killed))
  assert batches == [3, 4]
  assert stored(killed) == want and not os.path.exists(partial)


def test_export_merges_lora(tiny_lm, tmp_path):
  from qgjax.models.lora import LoraConfig, apply_unmerged, init_lora
  from qgjax.models.registry import load_decoder
  from qgjax.train.generator import Generator

  model, params, tok = load_decoder(tiny_lm)
  spec = LoraConfig(rank=2, alpha=4.0, targets="q_proj|down_proj")
  lora = init_lora(jax.random.key(0), params, spec)
  lora = jax.tree.map(lambda x: x + 0.1, lora)
  gen = Generator(model, tok, lora, params, None, None, "lora", spec)
  out = gen.export(lora, params, str(tmp_path / "export"))
  m2, p2, _ = load_decoder(out)
  tokens = jnp.asarray([[5, 9, 11, 3]], jnp.int32)
  pos = jnp.arange(4)[None]
  want, _ = apply_unmerged(model, params, lora, spec.scale, tokens, pos)
  got, _ = m2.apply({"params": p2}, tokens, pos)
  np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.slow
def test_rsft_and_rsft_dpo_jobs(tiny_lm, tmp_path):
  work = str(tmp_path / "rsft")
  assert _train("rsft.py:tiny", work, f"--config.model.name={tiny_lm}", "--config.num_steps=4",
                "--config.export.enabled=false", "--config.optim.lr=0.01") == 0
  s = _summary(work)
  losses = [json.loads(l)["loss"] for l in open(os.path.join(work, "metrics.jsonl"))]
  assert s["steps"] == 4 and losses[-1] < losses[0]              # the NLL goes down
  assert (s["dtype"], s["attention"]) == ("float32", "xla")
  work = str(tmp_path / "rsft_dpo")
  assert _train("rsft_dpo.py:tiny,sft_weight=0.5", work, f"--config.model.name={tiny_lm}", "--config.num_steps=2",
                "--config.export.enabled=false", "--config.dpo.reference=adapters_off") == 0
  final = _summary(work)["final"]
  np.testing.assert_allclose(final["loss"], final["dpo_loss"] + 0.5 * final["sft_nll"], rtol=1e-5)


def test_readqg_job(tiny_lm, tmp_path):
  from qgjax.methods.readqg.objective import load_soft_prompt

  work = str(tmp_path / "readqg")
  assert _train("readqg.py:tiny", work, f"--config.model.tokenizer={tiny_lm}", "--config.num_steps=3",
                "--config.eval_every=3") == 0
  s = _summary(work)
  assert s["steps"] == 3 and {"eval/mle", "eval/contrastive", "eval/calibration"} <= set(s["final"])
  soft, meta = load_soft_prompt(s["export"])
  assert soft["instruction"].shape == (meta["inst_len"], 64) and soft["true"].shape == (meta["rel_len"], 64)
  assert os.path.isfile(os.path.join(s["export"], "config.json"))


def test_readqg_margin_calibration_job(tiny_lm, tmp_path, capsys):
  """readqg.calibration=margin through the CLI: finite losses, the margin term and its similarity logged;
  an unknown variant is a config error."""
  work = str(tmp_path / "readqg_margin")
  assert _train("readqg.py:tiny", work, f"--config.model.tokenizer={tiny_lm}", "--config.num_steps=2",
                "--config.eval_every=2", "--config.readqg.calibration=margin",
                "--config.readqg.calibration_ngrams=(1,2,3)",
                "--config.export.enabled=false") == 0
  s = _summary(work)
  rows = [json.loads(l) for l in open(os.path.join(work, "metrics.jsonl"))]
  train = [r for r in rows if "calibration" in r]
  assert s["steps"] == 2 and len(train) == 2
  for r in train:
    assert np.isfinite(r["loss"]) and np.isfinite(r["calibration"]) and r["calibration"] >= 0
    assert 0 < r["calibration/similarity"] <= 3            # a sum of 3 F1 values
  assert {"eval/calibration", "eval/calibration/similarity"} <= set(s["final"])
  assert _train("readqg.py:tiny", str(tmp_path / "bad"), f"--config.model.tokenizer={tiny_lm}",
                "--config.readqg.calibration=slic") == 2
  assert "readqg.calibration='slic'" in capsys.readouterr().err


def test_user_errors_exit_2(tiny_lm, tmp_path, capsys):
  work = str(tmp_path / "err")
  assert _train("dpo.py:tiny", work, "--config.task=dpx") == 2
  assert "unknown config.task 'dpx'" in capsys.readouterr().err
  assert _train("dpo.py:tiny", work, f"--config.model.name={tiny_lm}", "--config.num_steps=1",
                "--config.export.enabled=false", "--config.dpo.reference=adapters_off",
                "--config.train_mode=full") == 2
  assert "adapters_off" in capsys.readouterr().err
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"doc_id": "demo-01", "chosen": "a query"}\n')
  assert _train("dpo.py:tiny", work, f"--config.model.name={tiny_lm}", f"--config.data.train={bad}") == 2
  assert "bad.jsonl:1, field 'rejected'" in capsys.readouterr().err
  # a workdir written by a different run is refused, not silently mixed
  assert _train("dpo.py:tiny", work, f"--config.model.name={tiny_lm}", "--config.num_steps=1",
                "--config.export.enabled=false", "--config.dpo.reference=adapters_off") == 0
  assert _train("dpo.py:tiny", work, f"--config.model.name={tiny_lm}", "--config.num_steps=1",
                "--config.export.enabled=false", "--config.dpo.reference=adapters_off",
                "--config.lora.rank=4") == 2
  assert "different run" in capsys.readouterr().err
