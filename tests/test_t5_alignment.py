"""SFT / RSFT / DPO / RSFT+DPO on T5 (Flan-T5-shaped, tiny random) through the decoder-only path's
tasks, loss code and jitted step, against transformers' PyTorch T5 in float64.

The reference scores every (prompt, completion) unpadded, one example per call, with
`T5ForConditionalGeneration(input_ids=prompt, labels=completion)` (transformers shifts the
labels right itself), in float64; the losses (DPO, IPO, RSFT+DPO, SFT NLL) are written out here
in torch and differentiated by torch autograd. LoRA's merge W + s * (a @ b) is written in torch
too. The qgjax side runs the batches the task's loader builds (prompts LEFT-padded, so the
encoder's padding is checked against unpadded inputs) through `lm_tasks.*_loss_fn` and `jax.grad`.
The CLI tests train through `qgjax train`, then read the export with transformers.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from qgjax.models import t5
from qgjax.models.hf_checkpoint import flatten_tree
from qgjax.train import examples as ex
from qgjax.train import lm_tasks
from qgjax.train.data import StepLoader
from tiny_lm import make_tiny_t5

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.torch_ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
PROMPTS = ["write one short search query that this document answers",
           "document : vitamin d and bone health in older adults",
           "reply with the query only",
           "write a query",
           "this document answers one short search query about sleep and memory",
           "vitamin d"]
CHOSEN = ["vitamin d bone health", "sleep", "what does this document answer", "short query", "memory and sleep",
          "bone"]
REJECTED = ["the the the", "write one short document query that answers", "a", "query query", "search",
            "sleep sleep memory"]
BATCH, PROMPT_LEN, COMPLETION_LEN = 4, 16, 8


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
  return make_tiny_t5(str(tmp_path_factory.mktemp("models") / "tiny_t5"))


def _dpo_defaults():
  import importlib.util

  spec = importlib.util.spec_from_file_location("qgjax_configs_dpo", os.path.join(CONFIGS, "dpo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny=true")


def _generator(path: str, mode: str):
  from qgjax.train.generator import load_generator

  cfg = _dpo_defaults()   # every key load_generator reads; the configs' lora targets find T5's kernels
  cfg.update(seed=0, train_mode=mode)
  cfg.model.update(name=path, kind="auto", init="pretrained", dtype="float32", scan_layers=True, remat=False)
  cfg.lora.update(rank=4, alpha=8.0)
  gen = load_generator(cfg, kind="t5")
  assert gen.kind == "t5" and isinstance(gen.module, t5.T5Model)
  return gen


def _policy(gen):
  """Trainable params away from the initial model (else every DPO loss is log 2)."""
  rng = np.random.default_rng(7)
  scale = 0.05 if gen.mode == "full" else 0.1   # LoRA's b starts at 0: make it non-zero
  return jax.tree.map(lambda x: (np.asarray(x) + scale * rng.standard_normal(np.shape(x))).astype(np.float32),
                      gen.trainable)


# ------------------------------------------------------------------------------------------------
# float64 torch reference


class TorchT5:
  """transformers' T5 in float64; `weights(trainable)` -> {HF name: tensor} of the policy (leaf
  tensors that collect gradients), `base()` the initial model's."""

  def __init__(self, path: str, gen):
    self.model = transformers.T5ForConditionalGeneration.from_pretrained(path).double().eval()
    self.table = t5.hf_table(gen.config)
    self.gen = gen
    self.base_hf = {k: torch.tensor(np.asarray(v, np.float64))
                    for k, v in t5.params_to_hf(self.table, gen.trainable if gen.mode == "full" else gen.frozen).items()}

  def base(self) -> dict:
    return dict(self.base_hf)

  def weights(self, trainable) -> tuple[dict, dict]:
    """-> (HF weights of the policy, {qgjax path: leaf tensor} for the gradients)."""
    if self.gen.mode == "full":
      leaves = {}
      for e in self.table:
        leaves[e.path] = torch.tensor(np.asarray(flatten_tree(trainable)[e.path], np.float64), requires_grad=True)
      return {e.hf: (leaves[e.path].T if e.transpose else leaves[e.path]) for e in self.table}, leaves
    lora = flatten_tree(trainable)
    leaves = {p: torch.tensor(np.asarray(x, np.float64), requires_grad=True) for p, x in lora.items()}
    by_path = {e.path: e for e in self.table}
    weights = self.base()
    for module in {p.rsplit("/", 1)[0] for p in lora}:
      e = by_path[f"{module}/kernel"]
      delta = self.gen.lora.scale * (leaves[f"{module}/a"] @ leaves[f"{module}/b"])   # [in, out]
      weights[e.hf] = weights[e.hf] + (delta.T if e.transpose else delta)
    return weights, leaves

  def logprobs(self, weights: dict, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Per-token log p(completion | prompt) [Tc], one unpadded example."""
    out = torch.func.functional_call(self.model, weights, args=(), kwargs=dict(
        input_ids=torch.tensor([prompt]), labels=torch.tensor([completion])))
    logp = torch.log_softmax(out.logits[0], dim=-1)
    return logp[torch.arange(len(completion)), torch.tensor(completion)]


def _log_sigmoid(x):
  return -torch.nn.functional.softplus(-x)


def _tokens(gen):
  tok = gen.tokenizer
  prompts = [tok(p, add_special_tokens=True)["input_ids"] for p in PROMPTS]   # as PromptBuilder renders T5 prompts
  chosen = ex.tokenize_completions(tok, CHOSEN)
  rejected = ex.tokenize_completions(tok, REJECTED)
  assert all(p[-1] == tok.eos_token_id for p in prompts) and all(c[-1] == tok.eos_token_id for c in chosen + rejected)
  assert max(map(len, prompts)) <= PROMPT_LEN and max(map(len, chosen + rejected)) <= COMPLETION_LEN
  assert len({len(p) for p in prompts}) > 1 and any(len(c) != len(r) for c, r in zip(chosen, rejected))
  return prompts, chosen, rejected


def _rows(step):
  """Dataset rows of a loader step (file order, the last batch wraps around) and their weights."""
  idx = step * BATCH + np.arange(BATCH)
  return idx % len(PROMPTS), (idx < len(PROMPTS)).astype(np.float64)


def _assert_grads(got: dict, leaves: dict):
  flat = flatten_tree(got)
  assert set(flat) == set(leaves)
  biggest = max(float(np.abs(np.asarray(x)).max()) for x in flat.values())
  assert biggest > 1e-3   # the loss depends on the trainable params
  for path, leaf in leaves.items():
    want = leaf.grad.numpy()
    np.testing.assert_allclose(np.asarray(flat[path]), want, rtol=2e-3, atol=2e-5 * biggest, err_msg=path)


@pytest.mark.parametrize("mode,loss_type,reference,sft_weight", [
    ("full", "sigmoid", "precomputed", 0.0),
    ("lora", "sigmoid", "adapters_off", 0.0),
    ("lora", "ipo", "adapters_off", 0.0),
    ("lora", "sigmoid", "precomputed", 0.5)])   # RSFT+DPO
def test_dpo_loss_and_gradients_match_torch_float64(tiny_t5, mode, loss_type, reference, sft_weight):
  gen = _generator(tiny_t5, mode)
  if mode == "lora":
    adapted = {p.rsplit("/", 2)[-2] for p in flatten_tree(gen.trainable)}
    assert {"q", "k", "v", "o", "wi_0", "wi_1", "wo"} <= adapted
    assert any(p.startswith("decoder/") and "/cross_attn/" in p for p in flatten_tree(gen.trainable))
  prompts, chosen, rejected = _tokens(gen)
  trainable = _policy(gen)
  ref = TorchT5(tiny_t5, gen)
  base = ref.base()
  with torch.no_grad():
    ref_c = [ref.logprobs(base, p, c).sum().item() for p, c in zip(prompts, chosen)]
    ref_r = [ref.logprobs(base, p, r).sum().item() for p, r in zip(prompts, rejected)]

  beta = 0.5
  dpo = ml_collections.ConfigDict(dict(beta=beta, label_smoothing=0.0, loss_type=loss_type, reference=reference,
                                       share_prompt=True, sft_weight=sft_weight))
  loss_fn = lm_tasks.dpo_loss_fn(gen, dpo, sft_weight=sft_weight)
  columns = {"prompt": prompts, "chosen": chosen, "rejected": rejected}
  if reference == "precomputed":
    columns.update(ref_chosen=ref_c, ref_rejected=ref_r)
  loader = StepLoader(columns, lm_tasks.PAIR_SPEC, batch_size=BATCH,
                      buckets={"prompt": (PROMPT_LEN,), "completion": (COMPLETION_LEN,)}, pad_id=0, shuffle=False)
  assert loader.steps_per_epoch == 2
  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  for step in range(2):
    batch = loader.batch(step)
    assert not batch["prompt_mask"][:, 0].all()   # left padding reaches the encoder
    rows, w = _rows(step)
    np.testing.assert_array_equal(batch["weight"], w)
    (loss, metrics), grads = grad_fn(trainable, gen.frozen, batch)

    weights, leaves = ref.weights(trainable)
    tok_c = [ref.logprobs(weights, prompts[i], chosen[i]) for i in rows]
    tok_r = [ref.logprobs(weights, prompts[i], rejected[i]) for i in rows]
    pi_c, pi_r = torch.stack([t.sum() for t in tok_c]), torch.stack([t.sum() for t in tok_r])
    rc, rr = torch.tensor([ref_c[i] for i in rows]), torch.tensor([ref_r[i] for i in rows])
    wt = torch.tensor(w)
    mean = lambda x: torch.sum(wt * x) / torch.sum(wt)
    if loss_type == "ipo":   # per-token means, (h - 1 / (2 beta))^2
      n_c = torch.tensor([float(len(chosen[i])) for i in rows])
      n_r = torch.tensor([float(len(rejected[i])) for i in rows])
      h = (pi_c / n_c - rc / n_c) - (pi_r / n_r - rr / n_r)
      want_loss = mean((h - 1.0 / (2.0 * beta)) ** 2)
      want = {"logps/chosen": mean(pi_c / n_c), "logps/rejected": mean(pi_r / n_r)}
    else:
      want_loss = mean(-_log_sigmoid(beta * ((pi_c - rc) - (pi_r - rr))))
      want = {"logps/chosen": mean(pi_c), "logps/rejected": mean(pi_r)}
    if loss_type == "sigmoid":
      want["dpo_loss"] = want_loss
      want["rewards/margin"] = mean(beta * ((pi_c - rc) - (pi_r - rr)))
    if sft_weight > 0:
      nll = -sum(wt[j] * tok_c[j].sum() for j in range(BATCH)) / sum(wt[j] * len(tok_c[j]) for j in range(BATCH))
      want["sft_nll"] = nll
      want_loss = want_loss + sft_weight * nll
    want_loss.backward()
    assert abs(float((mean(pi_c - rc) - mean(pi_r - rr)).detach())) > 0.05   # the policy moved off the reference
    for k, v in want.items():
      np.testing.assert_allclose(float(metrics[k]), float(v.detach()), rtol=1e-4, atol=2e-4, err_msg=f"step {step} {k}")
    np.testing.assert_allclose(float(loss), float(want_loss.detach()), rtol=1e-4, atol=2e-5, err_msg=f"step {step} loss")
    _assert_grads(grads, leaves)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_sft_loss_and_gradients_match_torch_float64(tiny_t5, mode):
  gen = _generator(tiny_t5, mode)
  prompts, chosen, _ = _tokens(gen)
  trainable = _policy(gen)
  ref = TorchT5(tiny_t5, gen)
  loader = StepLoader({"prompt": prompts, "completion": chosen}, lm_tasks.SFT_SPEC, batch_size=BATCH,
                      buckets={"prompt": (PROMPT_LEN,), "completion": (COMPLETION_LEN,)}, pad_id=0, shuffle=False)
  grad_fn = jax.jit(jax.value_and_grad(lm_tasks.sft_loss_fn(gen), has_aux=True))
  for step in range(2):
    rows, w = _rows(step)
    (loss, metrics), grads = grad_fn(trainable, gen.frozen, loader.batch(step))
    weights, leaves = ref.weights(trainable)
    tok = [ref.logprobs(weights, prompts[i], chosen[i]) for i in rows]
    nll = -sum(w[j] * tok[j].sum() for j in range(BATCH)) / sum(w[j] * len(tok[j]) for j in range(BATCH))
    nll.backward()
    np.testing.assert_allclose(float(loss), float(nll.detach()), rtol=1e-5, atol=1e-5, err_msg=f"step {step}")
    assert float(metrics["tokens"]) == sum(w[j] * len(tok[j]) for j in range(BATCH))
    _assert_grads(grads, leaves)


# ------------------------------------------------------------------------------------------------
# qgjax train on T5: runs, learns, exports what transformers loads


def _train(config: str, workdir: str, *overrides: str) -> dict:
  from qgjax import cli

  rc = cli.main(["train", "--config", os.path.join(CONFIGS, config), f"--config.workdir={workdir}",
                 "--config.mesh=[('data', 2), ('fsdp', 4)]", "--config.batch_size=8", "--config.data.eval_fraction=0.0",
                 *overrides])
  assert rc == 0
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def _records(path: str, n: int) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f][:n]


def _prompt_ids(tokenizer, records):
  from qgjax.data.beir import Corpus
  from qgjax.train.demo import DEMO_BEIR

  prompts = ex.RecordPrompts(_dpo_defaults().prompt, tokenizer, Corpus(os.path.join(DEMO_BEIR, "corpus.jsonl")))
  return [prompts.ids(r, "records", i + 1) for i, r in enumerate(records)]


def _hf_logprob(model, prompt: list[int], completion: list[int]) -> float:
  with torch.no_grad():
    logits = model(input_ids=torch.tensor([prompt]), labels=torch.tensor([completion])).logits[0].double()
  logp = torch.log_softmax(logits, dim=-1)
  return float(logp[torch.arange(len(completion)), torch.tensor(completion)].sum())


def _export_equals_qgjax(export: str, initial: str) -> transformers.T5ForConditionalGeneration:
  """The export loads in transformers with logits equal to qgjax's (1e-4) and differs from the initial model."""
  from qgjax.models.hf_checkpoint import read_safetensors_dir

  hf = transformers.T5ForConditionalGeneration.from_pretrained(export).eval()
  module, params, tokenizer = t5.load_t5(export)
  assert tokenizer is not None and module.config.tie_word_embeddings is False
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, module.config.vocab_size, size=(2, 11))
  mask = np.ones_like(tokens)
  mask[1, 7:] = 0
  dec = np.concatenate([np.zeros((2, 1), np.int64), rng.integers(3, module.config.vocab_size, size=(2, 5))], axis=1)
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
              decoder_input_ids=torch.tensor(dec)).logits.numpy()
  got = np.asarray(module.apply({"params": params}, tokens, mask.astype(bool), dec))
  assert np.abs(got - want).max() < 1e-4
  after, before = read_safetensors_dir(export), read_safetensors_dir(initial)
  assert set(after) == set(before)
  assert max(float(np.abs(after[k] - before[k]).max()) for k in after) > 1e-4   # training changed the weights
  return hf


@pytest.mark.slow
def test_dpo_and_rsft_dpo_jobs_train_t5_and_export_it(tiny_t5, tmp_path):
  work = str(tmp_path / "dpo")
  s = _train("dpo.py:tiny", work, f"--config.model.name={tiny_t5}", "--config.optim.lr=5e-3")
  assert s["steps"] == 8 and s["reference"].startswith("computed into") and s["train_pairs"] == 35
  initial = transformers.T5ForConditionalGeneration.from_pretrained(tiny_t5).eval()
  hf = _export_equals_qgjax(os.path.join(work, "export"), tiny_t5)

  # The reference pass scored the initial T5 as transformers does; over every pair the exported
  # policy's DPO loss is below log 2 (the loss of the initial model, policy = reference).
  stored = _records(os.path.join(work, "pairs_with_ref.jsonl"), 35)
  tok = transformers.AutoTokenizer.from_pretrained(tiny_t5)
  prompts = _prompt_ids(tok, stored)
  chosen = ex.tokenize_completions(tok, [r["chosen"] for r in stored])
  rejected = ex.tokenize_completions(tok, [r["rejected"] for r in stored])
  for i in range(4):
    np.testing.assert_allclose(stored[i]["ref_chosen"], _hf_logprob(initial, prompts[i], chosen[i]), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(stored[i]["ref_rejected"], _hf_logprob(initial, prompts[i], rejected[i]), rtol=1e-4,
                               atol=1e-3)
  beta = 0.1
  h = [(_hf_logprob(hf, p, c) - r["ref_chosen"]) - (_hf_logprob(hf, p, j) - r["ref_rejected"])
       for p, c, j, r in zip(prompts, chosen, rejected, stored)]
  loss = float(np.mean(np.logaddexp(0.0, -beta * np.asarray(h))))
  assert loss < np.log(2.0) - 0.005, loss

  s = _train("rsft_dpo.py:tiny", str(tmp_path / "rsft_dpo"), f"--config.model.name={tiny_t5}",
             "--config.train_mode=full", "--config.optim.lr=1e-3", "--config.num_steps=4")
  assert s["steps"] == 4 and np.isfinite(s["final"]["sft_nll"])
  _export_equals_qgjax(os.path.join(str(tmp_path / "rsft_dpo"), "export"), tiny_t5)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["rsft", "sft"])
def test_sft_jobs_train_t5_and_lower_its_nll(tiny_t5, tmp_path, task):
  from qgjax.train.demo import demo_path

  work = str(tmp_path / task)
  s = _train("rsft.py:tiny", work, f"--config.model.name={tiny_t5}", f"--config.task={task}",
             "--config.optim.lr=5e-3")
  assert s["steps"] == 8
  hf = _export_equals_qgjax(os.path.join(work, "export"), tiny_t5)
  initial = transformers.T5ForConditionalGeneration.from_pretrained(tiny_t5).eval()
  records = _records(demo_path("sft"), 10 ** 6)
  tok = transformers.AutoTokenizer.from_pretrained(tiny_t5)
  prompts = _prompt_ids(tok, records)
  queries = ex.tokenize_completions(tok, [r["query"] for r in records])
  nll = lambda m: -sum(_hf_logprob(m, p, q) for p, q in zip(prompts, queries)) / sum(map(len, queries))
  before, after = nll(initial), nll(hf)
  assert after < before - 0.05, (before, after)
