"""The DPO task loss (`lm_tasks.dpo_loss_fn`) on a tiny real decoder against an independent numpy
computation: sequence log-probs from a plain full forward of each unpadded [prompt ; completion],
the reference likewise (precomputed into the batch, or the LoRA base model with adapters off),
then -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) and the reward metrics averaged with
the batch's pair weights. A task that scored chosen as rejected (or vice versa) fails here."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qgjax.config import build_config
from qgjax.models.hf_checkpoint import flatten_tree, unflatten_tree
from qgjax.train import examples as ex
from qgjax.train import lm_tasks
from qgjax.train.data import StepLoader
from tiny_lm import make_tiny_lm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROMPTS = ["write one short search query that this document answers",
           "document : vitamin d and bone health in older adults",
           "reply with the query only",
           "write a query",
           "this document answers one short search query about sleep and memory"]
CHOSEN = ["vitamin d bone health", "sleep", "what does this document answer", "short query", "memory and sleep"]
REJECTED = ["the the the", "write one short document query that answers", "a", "query query", "search"]
BATCH, PROMPT_LEN, COMPLETION_LEN = 4, 16, 8


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
  return make_tiny_lm(str(tmp_path_factory.mktemp("models") / "tiny_lm"))


def _generator(path: str, mode: str):
  from qgjax.train.generator import load_generator

  cfg = build_config(os.path.join(REPO, "configs", "dpo.py"))
  cfg.update(seed=0, train_mode=mode)
  cfg.model.update(name=path, init="pretrained", dtype="float32", scan_layers=True, remat=False)
  cfg.lora.update(rank=4, alpha=8.0, targets=r"(q|v|up|down)_proj")
  return load_generator(cfg)


def _policy(gen):
  """Trainable params that differ from the initial model (else every DPO loss is log 2).

  Returns (trainable tree for the task, the policy's full parameter tree for the numpy side);
  the LoRA merge W + scale * a @ b is written out here, not taken from qgjax."""
  rng = np.random.default_rng(7)
  noise = lambda x, s: (np.asarray(x) + s * rng.standard_normal(np.shape(x))).astype(np.float32)
  if gen.mode == "full":
    trainable = jax.tree.map(lambda x: noise(x, 0.05), gen.trainable)
    return trainable, trainable
  trainable = jax.tree.map(lambda x: noise(x, 0.3), gen.trainable)   # b starts at 0: make it non-zero
  flat, lora = dict(flatten_tree(gen.frozen)), flatten_tree(trainable)
  for module in {p.rsplit("/", 1)[0] for p in lora}:
    a, b = np.asarray(lora[f"{module}/a"], np.float64), np.asarray(lora[f"{module}/b"], np.float64)
    flat[f"{module}/kernel"] = (np.asarray(flat[f"{module}/kernel"], np.float64)
                                + gen.lora.scale * np.matmul(a, b)).astype(np.float32)
  return trainable, unflatten_tree(flat)


@functools.lru_cache(maxsize=None)
def _forward(module):
  positions = lambda t: jnp.broadcast_to(jnp.arange(t.shape[1]), t.shape)
  return jax.jit(lambda p, t: module.apply({"params": p}, t, positions(t))[0])


def _numpy_logprobs(module, params, prompts, completions) -> tuple[np.ndarray, list[np.ndarray]]:
  """(sum, per-token) log p(completion | prompt) per row, from one plain forward of each unpadded
  [prompt ; completion] (positions 0..n-1, no mask). The rows are stacked right-padded into one
  call; under causal attention the padding after a sequence cannot change its logits."""
  seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
  tokens = np.zeros((len(seqs), PROMPT_LEN + COMPLETION_LEN), np.int32)
  for i, s in enumerate(seqs):
    tokens[i, :len(s)] = s
  logits = np.asarray(_forward(module)(params, tokens), np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  totals, per_token = [], []
  for i, (p, c) in enumerate(zip(prompts, completions)):
    # position len(p) - 1 + j predicts completion token j (the final EOS included)
    lp = np.asarray([logp[i, len(p) - 1 + j, tok] for j, tok in enumerate(c)])
    totals.append(lp.sum())
    per_token.append(lp)
  return np.asarray(totals), per_token


def _log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


@pytest.mark.parametrize("mode,reference,sft_weight,length_alpha", [("full", "precomputed", 0.0, 0.0),
                                                                    ("lora", "adapters_off", 0.0, 0.0),
                                                                    ("lora", "adapters_off", 0.5, 0.0),
                                                                    ("full", "precomputed", 0.0, 0.3),
                                                                    ("lora", "adapters_off", 0.5, 0.3)])
def test_dpo_task_loss_matches_numpy(tiny_lm, mode, reference, sft_weight, length_alpha):
  """The DPO task's loss and metrics against numpy log-probs of the same policy; length_alpha > 0 is R-DPO
  (+ alpha x (chosen - rejected token count) inside the sigmoid)."""
  gen = _generator(tiny_lm, mode)
  tok = gen.tokenizer
  eos = tok.eos_token_id
  prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
  chosen = ex.tokenize_completions(tok, CHOSEN)
  rejected = ex.tokenize_completions(tok, REJECTED)
  assert all(c[-1] == eos for c in chosen + rejected)   # completions end in EOS; it is scored
  assert max(map(len, prompts)) <= PROMPT_LEN and max(map(len, chosen + rejected)) <= COMPLETION_LEN
  assert len({len(p) for p in prompts}) > 1 and any(len(c) != len(r) for c, r in zip(chosen, rejected))

  trainable, policy_full = _policy(gen)
  base = gen.trainable if mode == "full" else gen.frozen
  pi_c, tok_c = _numpy_logprobs(gen.module, policy_full, prompts, chosen)
  pi_r, _ = _numpy_logprobs(gen.module, policy_full, prompts, rejected)
  ref_c, _ = _numpy_logprobs(gen.module, base, prompts, chosen)
  ref_r, _ = _numpy_logprobs(gen.module, base, prompts, rejected)

  beta = 0.5
  dpo = build_config(os.path.join(REPO, "configs", "dpo.py")).dpo
  dpo.update(beta=beta, label_smoothing=0.0, loss_type="sigmoid", reference=reference, share_prompt=True,
             sft_weight=sft_weight, length_alpha=length_alpha)
  loss_fn = jax.jit(lm_tasks.dpo_loss_fn(gen, dpo, sft_weight=sft_weight))
  columns = {"prompt": prompts, "chosen": chosen, "rejected": rejected}
  if reference == "precomputed":
    columns.update(ref_chosen=list(ref_c), ref_rejected=list(ref_r))
  loader = StepLoader(columns, lm_tasks.PAIR_SPEC, batch_size=BATCH,
                      buckets={"prompt": (PROMPT_LEN,), "completion": (COMPLETION_LEN,)}, pad_id=0, shuffle=False)
  assert loader.steps_per_epoch == 2
  for step in range(2):
    batch = loader.batch(step)
    rows = (step * BATCH + np.arange(BATCH)) % len(PROMPTS)   # file order; the last batch wraps around
    w = (step * BATCH + np.arange(BATCH) < len(PROMPTS)).astype(np.float64)
    np.testing.assert_array_equal(batch["weight"], w)
    loss, metrics = loss_fn(trainable, gen.frozen, batch)

    mean = lambda x: float(np.sum(w * x[rows]) / np.sum(w))
    h = (pi_c - ref_c) - (pi_r - ref_r)
    r_c, r_r = beta * (pi_c - ref_c), beta * (pi_r - ref_r)
    dlen = np.array([len(c) - len(r) for c, r in zip(chosen, rejected)], np.float64)
    want = {"dpo_loss": mean(-_log_sigmoid(beta * h + length_alpha * dlen)), "rewards/chosen": mean(r_c),
            "rewards/rejected": mean(r_r),
            "rewards/accuracy": mean((r_c > r_r).astype(np.float64)), "rewards/margin": mean(r_c - r_r),
            "logps/chosen": mean(pi_c), "logps/rejected": mean(pi_r)}
    want_loss = want["dpo_loss"]
    if length_alpha:
      want["length/chosen_minus_rejected"] = mean(dlen)
    if sft_weight > 0:
      # masked token NLL of the chosen completions (pair-weighted token mean)
      nll = -sum(w[i] * tok_c[r].sum() for i, r in enumerate(rows)) / sum(w[i] * len(tok_c[r])
                                                                            for i, r in enumerate(rows))
      want["sft_nll"] = float(nll)
      want_loss = want_loss + sft_weight * nll
    # the policy really moved away from the reference, and tells chosen from rejected: swapping
    # both (policy and reference) would change the DPO loss by exactly the margin
    # (-log sigmoid(-x) + log sigmoid(x) = x) and the accuracy to 1 - accuracy
    assert abs(want["rewards/margin"]) > 0.05, want
    assert abs(want["dpo_loss"] - np.log(2.0)) > 0.02, want
    assert set(want) <= set(metrics), sorted(metrics)
    for k, v in want.items():
      np.testing.assert_allclose(float(metrics[k]), v, rtol=1e-4, atol=2e-4, err_msg=f"step {step} {k}")
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-4, atol=2e-4, err_msg=f"step {step} loss")
