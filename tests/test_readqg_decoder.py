"""ReadQG on a decoder-only LM (qgjax.methods.readqg.decoder): the loss against a per-row numpy reference,
only the soft prompts train, and soft-prefix sampling against a step-by-step full-forward argmax."""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from qgjax.config import build_config
from qgjax.models.decoder import DecoderConfig, DecoderLM
from qgjax.models.soft_prompt import build_prefix
from readqg_reference import check_readqg_metrics, greedy_f1, log_softmax as _log_softmax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

V, D = 40, 16


@pytest.fixture(scope="module")
def tiny():
  cfg = DecoderConfig(vocab_size=V, hidden_size=D, intermediate_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=4, tie_word_embeddings=False, pad_token_id=0)
  model = DecoderLM(cfg)
  variables = jax.jit(model.init)(jax.random.key(3), jnp.ones((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32))
  params = jax.device_get(nn.unbox(variables["params"]))
  rng = np.random.default_rng(7)
  soft = {k: jnp.asarray(rng.normal(0, 0.5, (n, D)).astype(np.float32))
          for k, n in (("instruction", 3), ("true", 2), ("false", 2))}
  return model, params, soft


@functools.partial(jax.jit, static_argnums=0)
def _full(model, params, embeds):
  """Unpadded embeddings [1, L, D] -> (logits [1, L, V], final-norm hidden [1, L, D]); no cache, no mask."""
  logits, _, hidden = model.apply({"params": params}, None, jnp.arange(embeds.shape[1])[None], None,
                                  embeds=embeds, return_hidden=True)
  return logits, hidden


def _embed(params, ids):
  return np.asarray(params["embed_tokens"]["embedding"])[np.asarray(ids, np.int64)]




def _left(rows, width):
  out, mask = np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), bool)
  for i, r in enumerate(rows):
    out[i, width - len(r):], mask[i, width - len(r):] = r, True
  return out, mask


def _right(rows, width):
  out, mask = np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), bool)
  for i, r in enumerate(rows):
    out[i, :len(r)], mask[i, :len(r)] = r, True
  return out, mask


@pytest.mark.parametrize("calibration", ["rank", "margin"])
def test_decoder_readqg_loss_matches_per_row_numpy_reference(tiny, calibration):
  from qgjax.parallel import sharding
  from qgjax.parallel.mesh import make_mesh
  from qgjax.train.optim import make_optimizer
  from qgjax.methods.readqg.decoder import readqg_decoder_loss_fn
  from qgjax.train.step import create_state, make_train_step, state_shardings

  model, params, soft = tiny
  n_sep = 2
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(3, V, 5)) + [1, 2], list(rng.integers(3, V, 2)) + [1, 2]]   # doc + separator
  pos = [list(rng.integers(3, V, 3)) + [2], list(rng.integers(3, V, 1)) + [2]]
  neg = [list(rng.integers(3, V, 2)) + [2], [2]]
  batch = {}
  batch["prompt"], batch["prompt_mask"] = _left(prompts, 8)
  batch["positive"], batch["positive_mask"] = _right(pos, 5)
  batch["negative"], batch["negative_mask"] = _right(neg, 5)
  batch.update(r_positive=np.array([1.0, 0.7], np.float32), r_negative=np.array([0.0, 0.2], np.float32),
               weight=np.array([1.0, 0.0], np.float32))   # row 1 fills the batch: no MLE tokens of its own
  rq = ml_collections.ConfigDict(dict(tau=0.5, calibration=calibration, calibration_margin=0.7,
                                      calibration_ngrams=(1, 2), contrastive_weight=0.3, calibration_weight=2.0))
  loss_fn = readqg_decoder_loss_fn(model, rq, n_sep)
  loss, m = jax.jit(loss_fn)(soft, params, batch)

  def row(i, r, q):
    """One unpadded sequence [prefix(r) ; prompt ; q] through the plain forward -> (token log-probs,
    pooled prefix + document states, the final-norm states at the columns that predict q)."""
    prefix = np.asarray(build_prefix(soft, jnp.asarray([r], jnp.float32))[0])
    x = np.concatenate([prefix, _embed(params, prompts[i]), _embed(params, q)])[None]
    logits, hidden = _full(model, params, jnp.asarray(x))
    lp = _log_softmax(np.asarray(logits[0], np.float64))
    start = len(prefix) + len(prompts[i]) - 1                       # this column predicts q[0]
    tok = np.array([lp[start + j, q[j]] for j in range(len(q))])
    pooled = np.asarray(hidden[0, :len(prefix) + len(prompts[i]) - n_sep], np.float64).mean(0)
    return tok, pooled, np.asarray(hidden[0, start:start + len(q)], np.float64)

  mle_tok, fw_mean, rev_mean, pooled, keys, sim = [], [], [], [], [], []
  for kind in ("pos", "neg"):
    for i in range(2):
      r = batch["r_positive"][i] if kind == "pos" else batch["r_negative"][i]
      keys.append((tuple(prompts[i]), float(r)))
      q, q_rev = (pos[i], neg[i]) if kind == "pos" else (neg[i], pos[i])
      tok, pool, states = row(i, r, q)
      tok_rev, _, states_rev = row(i, r, q_rev)
      if batch["weight"][i]:
        mle_tok.append(tok)
      fw_mean.append(tok.mean())
      rev_mean.append(tok_rev.mean())
      sim.append(greedy_f1(states, states_rev, (1, 2)))
      pooled.append(pool)
  check_readqg_metrics(m, loss, mle_tok, fw_mean, rev_mean, pooled, margin=0.7, tau=0.5, w_con=0.3, w_cal=2.0,
                       keys=keys, sim=sim if calibration == "margin" else None)
  assert ("calibration/similarity" in m) == (calibration == "margin")
  np.testing.assert_allclose(m["logp/neg_given_pos"], np.mean(rev_mean[:2]), rtol=1e-4)

  # every soft prompt part gets a gradient; one optimizer step moves them and nothing else
  g = jax.jit(jax.grad(lambda s: loss_fn(s, params, batch)[0]))(soft)
  assert all(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(g))
  from qgjax.models.soft_prompt import SoftPrompt

  mesh = make_mesh([("data", 1)], jax.devices()[:1])
  rules = sharding.rules_for(mesh)
  optim = build_config(os.path.join(REPO, "configs", "readqg.py:decoder")).optim   # adamw, lr 1e-2, constant
  assert (optim.lr, optim.warmup_steps, optim.schedule, optim.grad_clip) == (1e-2, 0, "constant", 1.0)
  tx, sched = make_optimizer(optim, 10)
  abstract_soft = jax.eval_shape(SoftPrompt(3, 2, D).init, jax.random.key(0), jnp.zeros((1,)))["params"]
  abstract_lm = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 2), jnp.int32),
                               jnp.zeros((1, 2), jnp.int32))["params"]
  shard = state_shardings(abstract_soft, abstract_lm, tx, mesh, rules)
  state = create_state(jax.device_get(soft), params, shard, tx, mesh, rules)
  step = make_train_step(loss_fn, tx, sched, mesh=mesh, rules=rules, shardings=shard, example_batch=batch,
                         donate=False)
  new, _ = step(state, sharding.put_batch(batch, mesh, rules))
  for k in soft:
    assert np.abs(np.asarray(new.params[k]) - np.asarray(soft[k])).max() > 1e-4, k
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), new.frozen, params)


@pytest.mark.parametrize("shared_prompt", [True, False])
def test_soft_prefix_greedy_sampling_matches_full_forward_argmax(tiny, shared_prompt):
  from qgjax.methods.readqg.generate import _soft_generate
  from qgjax.sampling.engine import Sampler, local_data_mesh
  from qgjax.sampling.logits import SamplingParams
  from qgjax.models.decoder import unrolled

  model, params, soft = tiny
  n_new, eos = 6, 30   # the second prompt stops at EOS after 4 tokens
  sampling = SamplingParams(max_new_tokens=n_new, temperature=0.0, eos_token_ids=(eos,), pad_token_id=0)
  prompts = [[7, 8, 9, 10, 1, 2], [11, 12, 1, 2]]
  run_model, run_params = unrolled(model, params) if shared_prompt else (model, params)
  if shared_prompt:   # the ReadQG job's own generate function
    gen = functools.partial(_soft_generate, "decoder", run_model, sampling, 0.3)
  else:
    from qgjax.sampling.decoder import generate_decoder

    def gen(p, tokens, mask, keys):
      prefix = build_prefix(p["soft"], jnp.full((tokens.shape[0],), 0.3, jnp.float32))
      return generate_decoder(run_model, p["model"], tokens, mask, keys, sampling, shared_prompt=False, prefix=prefix)
  sampler = Sampler(gen, {"model": run_params, "soft": soft}, sampling, batch_size=2, pad_id=0, pad_side="left",
                    mesh=local_data_mesh(1))
  out = sampler.run(prompts, ["a", "b"], length=8)
  prefix = np.asarray(build_prefix(soft, jnp.full((1,), 0.3, jnp.float32))[0])
  for i, ids in enumerate(prompts):
    x, want, lps = np.concatenate([prefix, _embed(params, ids)]), [], []
    for _ in range(n_new):
      logits, _ = _full(model, params, jnp.asarray(x[None]))
      lp = _log_softmax(np.asarray(logits[0, -1], np.float64))
      t = int(np.argmax(lp))
      want.append(t)
      lps.append(lp[t])
      if t == eos:
        break
      x = np.concatenate([x, _embed(params, [t])])
    got, got_lp = out.sequence(i, 0)
    assert got == want and len(got) == (n_new if i == 0 else 4)
    np.testing.assert_allclose(got_lp, lps, atol=1e-4)
