"""Alignment losses, sequence log-probs, the step-addressable loader and schedules vs numpy references."""

import functools
import pathlib
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qgjax.train import logprobs as L
from qgjax.train import losses
from qgjax.train.data import Column, StepLoader
from readqg_reference import check_readqg_metrics, greedy_f1

REPO = pathlib.Path(__file__).resolve().parents[1]


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _logsig(x):
  return -np.log1p(np.exp(-x))


# ------------------------------------------------------------------------------------------------
# losses


def test_masked_nll():
  rng = np.random.default_rng(0)
  lp = -rng.random((3, 5)).astype(np.float32)
  mask = rng.random((3, 5)) > 0.4
  ref = -(lp * mask).sum() / mask.sum()
  np.testing.assert_allclose(losses.masked_nll(jnp.asarray(lp), jnp.asarray(mask)), ref, rtol=1e-6)
  assert float(losses.masked_nll(jnp.asarray(lp), jnp.zeros((3, 5)))) == 0.0


@pytest.mark.parametrize("ls", [0.0, 0.2])
def test_dpo_sigmoid_matches_numpy(ls):
  rng = np.random.default_rng(1)
  pc, pr, rc, rr = (rng.normal(-20, 5, 6).astype(np.float32) for _ in range(4))
  w = np.array([1, 1, 0, 1, 1, 1], np.float32)
  beta = 0.3
  out = losses.dpo_loss(*map(jnp.asarray, (pc, pr, rc, rr)), beta=beta, label_smoothing=ls, weights=jnp.asarray(w))
  h = (pc - pr) - (rc - rr)
  per = -(1 - ls) * _logsig(beta * h) - ls * _logsig(-beta * h)
  np.testing.assert_allclose(out.loss, (per * w).sum() / w.sum(), rtol=1e-5)
  r_c, r_r = beta * (pc - rc), beta * (pr - rr)
  m = out.metrics
  np.testing.assert_allclose(m["rewards/chosen"], (r_c * w).sum() / w.sum(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m["rewards/margin"], ((r_c - r_r) * w).sum() / w.sum(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m["rewards/accuracy"], ((r_c > r_r) * w).sum() / w.sum(), rtol=1e-6)
  np.testing.assert_allclose(m["logps/rejected"], (pr * w).sum() / w.sum(), rtol=1e-6)


def test_dpo_gradient_sign_and_ipo():
  pc, pr = jnp.asarray([-10.0, -12.0]), jnp.asarray([-11.0, -9.0])
  rc, rr = jnp.asarray([-10.5, -11.0]), jnp.asarray([-10.5, -11.0])
  g = jax.grad(lambda a: losses.dpo_loss(a, pr, rc, rr, beta=0.1).loss)(pc)
  assert np.all(np.asarray(g) < 0)  # raising log p(chosen) lowers the loss
  beta = 0.5
  out = losses.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo")
  h = (np.asarray(pc) - np.asarray(pr)) - (np.asarray(rc) - np.asarray(rr))
  np.testing.assert_allclose(out.loss, np.mean((h - 1 / (2 * beta)) ** 2), rtol=1e-6)
  with pytest.raises(ValueError, match="loss_type"):
    losses.dpo_loss(pc, pr, rc, rr, loss_type="hinge2")


def test_r_dpo_length_term_matches_numpy_and_discounts_longer_chosen():
  """R-DPO (Park et al. 2024): -log sigmoid(beta h + alpha (len_c - len_r)); alpha 0 is plain DPO, and a
  longer chosen answer gets a smaller push towards itself."""
  rng = np.random.default_rng(3)
  pc, pr, rc, rr = (rng.normal(-20, 5, 5).astype(np.float32) for _ in range(4))
  lc, lr = np.array([12, 7, 9, 20, 5], np.float32), np.array([8, 7, 15, 6, 5], np.float32)
  beta, alpha = 0.2, 0.05
  args = tuple(map(jnp.asarray, (pc, pr, rc, rr)))
  out = losses.dpo_loss(*args, beta=beta, length_alpha=alpha, len_chosen=jnp.asarray(lc), len_rejected=jnp.asarray(lr))
  h = (pc - pr) - (rc - rr)
  np.testing.assert_allclose(out.loss, np.mean(-_logsig(beta * h + alpha * (lc - lr))), rtol=1e-5)
  np.testing.assert_allclose(out.metrics["length/chosen_minus_rejected"], np.mean(lc - lr), rtol=1e-6)
  plain = losses.dpo_loss(*args, beta=beta)
  zero = losses.dpo_loss(*args, beta=beta, length_alpha=0.0, len_chosen=jnp.asarray(lc), len_rejected=jnp.asarray(lr))
  np.testing.assert_allclose(zero.loss, plain.loss, rtol=1e-7)
  grad = lambda **kw: np.asarray(jax.grad(lambda a: losses.dpo_loss(a, *args[1:], beta=beta, **kw).loss)(args[0]))
  g_plain = grad()
  g_r = grad(length_alpha=alpha, len_chosen=jnp.asarray(lc), len_rejected=jnp.asarray(lr))
  longer, shorter, same = lc > lr, lc < lr, lc == lr
  assert np.all(np.abs(g_r[longer]) < np.abs(g_plain[longer]))
  assert np.all(np.abs(g_r[shorter]) > np.abs(g_plain[shorter]))
  np.testing.assert_allclose(g_r[same], g_plain[same], rtol=1e-6)
  with pytest.raises(ValueError, match="sigmoid"):
    losses.dpo_loss(*args, loss_type="ipo", length_alpha=alpha, len_chosen=jnp.asarray(lc), len_rejected=jnp.asarray(lr))
  with pytest.raises(ValueError, match="len_chosen"):
    losses.dpo_loss(*args, length_alpha=alpha)


def test_rsft_dpo_is_weighted_sum():
  rng = np.random.default_rng(2)
  pc, pr, rc, rr = (jnp.asarray(rng.normal(-20, 5, 4).astype(np.float32)) for _ in range(4))
  tok = jnp.asarray(-rng.random((4, 7)).astype(np.float32))
  mask = jnp.asarray(rng.random((4, 7)) > 0.3)
  d = losses.dpo_loss(pc, pr, rc, rr, beta=0.2)
  c = losses.rsft_dpo_loss(pc, pr, rc, rr, tok, mask, sft_weight=0.7, beta=0.2)
  nll = -(np.asarray(tok) * np.asarray(mask)).sum() / np.asarray(mask).sum()
  np.testing.assert_allclose(c.loss, float(d.loss) + 0.7 * nll, rtol=1e-6)
  np.testing.assert_allclose(c.metrics["sft_nll"], nll, rtol=1e-6)


def test_readqg_losses_match_numpy():
  rng = np.random.default_rng(3)
  states = rng.normal(size=(4, 6, 5)).astype(np.float32)
  mask = np.ones((4, 6), bool)
  mask[1, 4:] = False
  mask[3, 1:] = False
  pooled = np.stack([states[i][mask[i]].mean(0) for i in range(4)])
  np.testing.assert_allclose(losses.mean_pool(jnp.asarray(states), jnp.asarray(mask)), pooled, rtol=1e-5)
  tau = 0.3
  z = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
  logits = z @ z.T / tau
  ref = -np.mean([_log_softmax(logits[i])[i] for i in range(4)])
  np.testing.assert_allclose(losses.self_contrastive_loss(jnp.asarray(pooled), tau), ref, rtol=1e-5)
  fw, rev = rng.normal(-2, 1, 6).astype(np.float32), rng.normal(-2, 1, 6).astype(np.float32)
  np.testing.assert_allclose(losses.calibration_hinge(jnp.asarray(fw), jnp.asarray(rev), 0.5),
                             np.mean(np.maximum(0, 0.5 - fw + rev)), rtol=1e-6)


def _padded(rows, width, d, rng):
  """Unpadded [L_i, D] arrays -> right-padded f32[N, width, D] (random garbage in the padding) + mask."""
  out = rng.normal(size=(len(rows), width, d)).astype(np.float32)
  mask = np.zeros((len(rows), width), bool)
  for i, r in enumerate(rows):
    out[i, :len(r)], mask[i, :len(r)] = r, True
  return out, mask


def test_greedy_match_f1_hand_example():
  # a: e1, e2, -e1 (a negative cosine counts as 0); b: 2 e1. Unigrams: p = 1 (b's token matches e1),
  # r = (1 + 0 + 0) / 3. Bigrams: b is shorter than 2, one window (best 1): p = 1; a's windows
  # {e1, e2} -> 1 and {e2, -e1} -> 0: r = 1/2.
  a = [np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])]
  b = [np.array([[2.0, 0.0]])]
  rng = np.random.default_rng(0)
  (pa, ma), (pb, mb) = _padded(a, 4, 2, rng), _padded(b, 4, 2, rng)
  hand = {(1,): 2 * (1 / 3) / (4 / 3 + 1e-5), (2,): 2 * 0.5 / (1.5 + 1e-5)}
  hand[(1, 2)] = hand[(1,)] + hand[(2,)]
  for ngrams, want in hand.items():
    got = losses.greedy_match_f1(jnp.asarray(pa), jnp.asarray(ma), jnp.asarray(pb), jnp.asarray(mb), ngrams)
    np.testing.assert_allclose(got, [want], rtol=1e-6)
    np.testing.assert_allclose(greedy_f1(a[0], b[0], ngrams), want, rtol=1e-12)   # the reference agrees
  np.testing.assert_allclose(hand[(1, 2)], 0.5 + 2 / 3, rtol=1e-4)


def test_greedy_match_f1_matches_float64_reference():
  rng = np.random.default_rng(11)
  d, n = 6, 5
  lens_a, lens_b = [5, 1, 3, 2, 0], [2, 4, 3, 1, 0]   # shorter than the n-gram, equal, empty
  a = [rng.normal(size=(k, d)) for k in lens_a]
  b = [rng.normal(size=(k, d)) for k in lens_b]
  b[2] = a[2] + 0.05 * rng.normal(size=(3, d))          # a near copy: F1 close to len(ngrams)
  for ngrams in ((1,), (1, 2), (1, 2, 3)):
    want = [greedy_f1(a[i], b[i], ngrams) if lens_a[i] and lens_b[i] else 0.0 for i in range(n)]
    for width in (5, 8):   # the padding length does not matter
      (pa, ma), (pb, mb) = _padded(a, width, d, rng), _padded(b, width, d, rng)
      got = losses.greedy_match_f1(jnp.asarray(pa), jnp.asarray(ma), jnp.asarray(pb), jnp.asarray(mb), ngrams)
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
      swapped = losses.greedy_match_f1(jnp.asarray(pb), jnp.asarray(mb), jnp.asarray(pa), jnp.asarray(ma), ngrams)
      np.testing.assert_allclose(swapped, got, rtol=1e-6)
  assert greedy_f1(a[2], b[2], (1, 2)) > 1.9


def test_calibration_margin_hinge_matches_numpy_and_holds_sim_constant():
  rng = np.random.default_rng(12)
  fw, rev = rng.normal(-2, 0.5, 6), rng.normal(-2, 0.5, 6)
  sim = rng.uniform(0, 2, 6)
  want = np.mean(np.maximum(0, 0.7 * sim - fw + rev))
  f = lambda fw, rev, sim: losses.calibration_margin_hinge(fw, rev, sim, 0.7)
  args = [jnp.asarray(x, jnp.float32) for x in (fw, rev, sim)]
  np.testing.assert_allclose(f(*args), want, rtol=1e-6)
  assert 0 < want and (0.7 * sim - fw + rev < 0).any()           # both sides of the hinge are exercised
  g_fw, g_rev, g_sim = jax.grad(f, argnums=(0, 1, 2))(*args)
  active = (0.7 * sim - fw + rev > 0) / 6
  np.testing.assert_allclose(g_fw, -active, atol=1e-7)
  np.testing.assert_allclose(g_rev, active, atol=1e-7)
  np.testing.assert_array_equal(g_sim, 0.0)


# ------------------------------------------------------------------------------------------------
# sequence log-probs


def test_token_logprobs():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(2, 3, 11)).astype(np.float32)
  tgt = rng.integers(0, 11, (2, 3))
  ref = np.take_along_axis(_log_softmax(logits), tgt[..., None], -1)[..., 0]
  np.testing.assert_allclose(L.token_logprobs(jnp.asarray(logits), jnp.asarray(tgt)), ref, rtol=1e-5, atol=1e-6)


def _tiny_decoder():
  from qgjax.models.decoder import DecoderConfig, DecoderLM

  cfg = DecoderConfig(vocab_size=37, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8)
  model = DecoderLM(cfg)
  params = model.init(jax.random.key(0), jnp.ones((1, 3), jnp.int32), jnp.zeros((1, 3), jnp.int32))
  return model, params


def _pair_batch(seed=0, b=3, tp=6, tc=4, vocab=37):
  rng = np.random.default_rng(seed)
  prompt = rng.integers(1, vocab, (b, tp)).astype(np.int32)
  pm = np.ones((b, tp), bool)
  pm[0, :2] = False
  pm[2, :4] = False
  ch, rj = (rng.integers(1, vocab, (b, tc)).astype(np.int32) for _ in range(2))
  cm, rm = np.ones((b, tc), bool), np.ones((b, tc), bool)
  cm[1, 2:] = False
  rm[0, 1:] = False
  return prompt, pm, ch, cm, rj, rm


def test_decoder_pair_logprobs_shared_prompt_equals_unpadded_numpy():
  model, params = _tiny_decoder()
  prompt, pm, ch, cm, rj, rm = _pair_batch()
  # jitted: eagerly, every primitive of the scanned layers (and of their gradient) is compiled on its own
  logprobs = jax.jit(lambda p, share: L.pair_logprobs(L.decoder_fns(model, p), prompt, pm, ch, cm, rj, rm,
                                                      share_prompt=share), static_argnums=1)
  forward = jax.jit(model.apply)
  c1, r1 = logprobs(params, True)
  c2, r2 = logprobs(params, False)
  np.testing.assert_allclose(c1.token, c2.token, atol=2e-5)
  np.testing.assert_allclose(r1.token, r2.token, atol=2e-5)
  for comp, mask, got in ((ch, cm, c1), (rj, rm, r1)):
    for i in range(prompt.shape[0]):
      seq = np.concatenate([prompt[i][pm[i]], comp[i][mask[i]]])
      logits, _ = forward(params, seq[None], np.arange(len(seq))[None])
      lp = _log_softmax(np.asarray(logits[0], np.float64))
      n = pm[i].sum()
      ref = sum(lp[n - 1 + j, seq[n + j]] for j in range(mask[i].sum()))
      np.testing.assert_allclose(got.total[i], ref, rtol=1e-5, atol=1e-4)
      assert got.count[i] == mask[i].sum()
  # the same gradients either way
  def total(p, share):
    c, r = L.pair_logprobs(L.decoder_fns(model, p), prompt, pm, ch, cm, rj, rm, share_prompt=share)
    return jnp.sum(c.total) - 0.5 * jnp.sum(r.total)
  grad = jax.jit(jax.grad(total), static_argnums=1)
  g1, g2 = grad(params, True), grad(params, False)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_encdec_pair_logprobs_match_numpy():
  from qgjax.models.t5 import T5Config, T5Model, init_params

  cfg = T5Config(vocab_size=41, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)
  model = T5Model(cfg)
  params = init_params(model, 0)
  fns = L.t5_fns(model, {"params": params})
  rng = np.random.default_rng(5)
  src = rng.integers(2, 41, (2, 7)).astype(np.int32)
  smask = np.ones((2, 7), bool)
  smask[1, 5:] = False
  ch, rj = (rng.integers(2, 41, (2, 4)).astype(np.int32) for _ in range(2))
  cm, rm = np.ones((2, 4), bool), np.ones((2, 4), bool)
  cm[0, 3:] = False
  c, r = jax.jit(lambda *a: L.encdec_pair_logprobs(fns, *a))(src, smask, ch, cm, rj, rm)
  forward = jax.jit(model.apply)
  for comp, mask, got in ((ch, cm, c), (rj, rm, r)):
    for i in range(2):
      n, m = smask[i].sum(), mask[i].sum()
      dec_in = np.concatenate([[cfg.decoder_start_token_id], comp[i][: m - 1]])[None]
      logits = forward({"params": params}, src[i:i + 1, :n], np.ones((1, n), bool), dec_in)
      lp = _log_softmax(np.asarray(logits[0], np.float64))
      np.testing.assert_allclose(got.total[i], sum(lp[j, comp[i, j]] for j in range(m)), rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# data loader and schedule


def _columns(n=11, seed=0):
  rng = np.random.default_rng(seed)
  return {"prompt": [list(rng.integers(1, 50, rng.integers(1, 20))) for _ in range(n)],
          "completion": [list(rng.integers(1, 50, rng.integers(1, 6))) for _ in range(n)],
          "score": list(rng.random(n))}


SPEC = {"prompt": Column("prompt", "left"), "completion": Column("completion", "right")}


def test_loader_static_shapes_determinism_and_resume():
  cols = _columns()
  mk = lambda **k: StepLoader(cols, SPEC, batch_size=4, buckets={"prompt": (8, 16), "completion": (8,)}, pad_id=0,
                              seed=7, bucket_window=2, **k)
  a, b = mk(), mk()
  assert a.steps_per_epoch == 3
  for step in (0, 1, 2, 3, 7):   # random access by step: a fresh loader gives the same batch
    for k, v in a.batch(step).items():
      np.testing.assert_array_equal(v, b.batch(step)[k])
  seen = np.concatenate([a.indices(s) for s in range(3)])
  assert set(seen) == set(range(11)) and len(seen) == 12          # every example once + one wrap-around
  assert not np.array_equal(a.epoch_order(0), a.epoch_order(1))   # reshuffled per epoch
  shapes = a.shapes()
  assert len(shapes) <= 2                                          # one program per prompt bucket
  batch = a.batch(0)
  for i, idx in enumerate(a.indices(0)):
    p, c = cols["prompt"][idx], cols["completion"][idx]
    lp = batch["prompt"].shape[1]
    kept = p[-lp:]
    np.testing.assert_array_equal(batch["prompt"][i, lp - len(kept):], kept)       # left padded
    assert not batch["prompt_mask"][i, : lp - len(kept)].any()
    np.testing.assert_array_equal(batch["completion"][i, : len(c)], c)            # right padded
    assert batch["completion_mask"][i].sum() == len(c)
    np.testing.assert_allclose(batch["score"][i], cols["score"][idx])
  # two processes each get half of the same global batch
  halves = [StepLoader(cols, SPEC, batch_size=4, buckets={"prompt": (8, 16), "completion": (8,)}, pad_id=0, seed=7,
                       bucket_window=2, process_index=p, process_count=2) for p in range(2)]
  for step in range(3):
    both = np.concatenate([h.indices(step) for h in halves])
    np.testing.assert_array_equal(both, a.indices(step))
    assert halves[0].batch(step)["prompt"].shape == halves[1].batch(step)["prompt"].shape


def test_loader_file_order_weights():
  cols = _columns(n=5)
  ld = StepLoader(cols, SPEC, batch_size=4, buckets={"prompt": (32,), "completion": (8,)}, pad_id=0, shuffle=False)
  np.testing.assert_array_equal(ld.indices(0), [0, 1, 2, 3])
  np.testing.assert_array_equal(ld.indices(1), [4, 0, 1, 2])
  np.testing.assert_array_equal(ld.batch(1)["weight"], [1, 0, 0, 0])


def _optim(**values):
  """configs/dpo.py's optim group (every key the optimizer reads) with `values` set."""
  from qgjax.config import build_config

  optim = build_config(str(REPO / "configs" / "dpo.py")).optim
  optim.update(values)
  return optim


def test_schedule_warmup_cosine():
  from qgjax.train.optim import make_schedule

  optim = _optim(lr=1e-3, warmup_steps=10, schedule="cosine", end_lr_ratio=0.1)
  s = make_schedule(optim, 110)
  np.testing.assert_allclose(s(5), 5e-4, rtol=1e-6)
  np.testing.assert_allclose(s(10), 1e-3, rtol=1e-6)
  t = 50 / 100
  np.testing.assert_allclose(s(60), 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + np.cos(np.pi * t)), rtol=1e-5)
  np.testing.assert_allclose(s(110), 1e-4, rtol=1e-5)
  optim.schedule = "linear"
  np.testing.assert_allclose(make_schedule(optim, 110)(60), 1e-3 + (1e-4 - 1e-3) * 0.5, rtol=1e-5)


def test_schedule_warmup_longer_than_run_is_cut(caplog):
  from qgjax.train.optim import make_schedule

  optim = _optim(lr=1e-3, warmup_steps=10, schedule="constant")
  with caplog.at_level("WARNING", logger="qgjax"):
    np.testing.assert_allclose(make_schedule(optim, 1)(0), 1e-3)     # was 0: one step at lr 0
  assert [r.name for r in caplog.records] == ["qgjax.train.optim"]
  assert "warmup_steps=10 >= the run's 1 steps" in caplog.records[0].getMessage()
  np.testing.assert_allclose(make_schedule(optim, 20)(5), 5e-4)     # warmup 10 < 20 steps: kept
  np.testing.assert_allclose(make_schedule(optim, 10)(0), 0.0)      # cut to 1 warmup step
  np.testing.assert_allclose(make_schedule(optim, 10)(1), 1e-3)
  np.testing.assert_allclose(make_schedule(optim, 11)(10), 1e-3)    # warmup 10 < 11 steps: kept


@functools.partial(jax.jit, static_argnums=0)
def _t5_row(model, params, soft, src, r, dec_in):
  """One unpadded row through T5Model.__call__ with prefix embeddings (the reference path) -> (encoder
  states, logits, the decoder's final-norm states captured as that module's output)."""
  from qgjax.models.soft_prompt import build_prefix, prepend
  from qgjax.models.t5 import T5Model

  emb = model.apply({"params": params}, src, method=T5Model.embed)
  x, mask = prepend(build_prefix(soft, r[None]), emb, jnp.ones(src.shape, bool))
  enc = model.apply({"params": params}, None, mask, embeds=x, method=T5Model.encode)
  logits, state = model.apply({"params": params}, None, mask, dec_in, embeds=x, capture_intermediates=True)
  return enc, logits, state["intermediates"]["decoder"]["final_norm"]["__call__"][0]


@pytest.mark.parametrize("calibration", ["rank", "margin"])
def test_readqg_loss_matches_per_row_numpy_reference(calibration):
  import ml_collections

  from qgjax.models.t5 import T5Config, T5Model, init_params
  from qgjax.methods.readqg.t5 import readqg_loss_fn

  cfg = T5Config(vocab_size=29, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_decoder_layers=1, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)
  model = T5Model(cfg)
  params = init_params(model, 1)
  rng = np.random.default_rng(6)
  soft = {k: jnp.asarray(rng.normal(size=(n, 16)).astype(np.float32)) for k, n in (("instruction", 3), ("true", 2), ("false", 2))}
  b = 3   # row 2 is another pair of row 0's document at the same r: not its self-contrastive negative
  batch = {"source": rng.integers(2, 29, (b, 6)).astype(np.int32), "source_mask": np.arange(6)[None] < np.array([[6], [4], [6]]),
           "positive": rng.integers(2, 29, (b, 4)).astype(np.int32), "positive_mask": np.arange(4)[None] < np.array([[4], [2], [3]]),
           "negative": rng.integers(2, 29, (b, 4)).astype(np.int32), "negative_mask": np.arange(4)[None] < np.array([[3], [1], [2]]),
           "r_positive": np.array([1.0, 0.8, 1.0], np.float32), "r_negative": np.array([0.0, 0.1, 0.0], np.float32),
           "weight": np.ones(b, np.float32)}
  batch["source"][2] = batch["source"][0]
  rq = ml_collections.ConfigDict(dict(tau=0.5, calibration=calibration, calibration_margin=0.7,
                                      calibration_ngrams=(1, 2), contrastive_weight=0.3, calibration_weight=2.0))
  loss, m = jax.jit(readqg_loss_fn(model, rq))(soft, params, batch)
  t5_row = jax.jit(lambda src, r, dec_in: _t5_row(model, params, soft, src, r, dec_in))

  def row(i, r, q, qm):
    """Per-row reference: embeddings -> T5Model.__call__ (embeds path), numpy log-softmax."""
    n = batch["source_mask"][i].sum()
    k = qm.sum()
    dec_in = np.concatenate([[cfg.decoder_start_token_id], q[: k - 1]])[None]
    enc, logits, states = t5_row(batch["source"][i:i + 1, :n], np.float32(r), dec_in)
    lp = _log_softmax(np.asarray(logits[0], np.float64))
    return (np.array([lp[j, q[j]] for j in range(k)]), np.asarray(enc[0], np.float64).mean(0),
            np.asarray(states[0], np.float64))

  fw_tok, fw_mean, rev_mean, pooled, keys, sim = [], [], [], [], [], []
  for kind in ("pos", "neg"):
    for i in range(b):
      r = batch["r_positive"][i] if kind == "pos" else batch["r_negative"][i]
      keys.append((tuple(batch["source"][i][batch["source_mask"][i]]), float(r)))
      q, qm = (batch["positive"][i], batch["positive_mask"][i]) if kind == "pos" else (batch["negative"][i], batch["negative_mask"][i])
      q2, qm2 = (batch["negative"][i], batch["negative_mask"][i]) if kind == "pos" else (batch["positive"][i], batch["positive_mask"][i])
      tok, pool, states = row(i, r, q, qm)
      tok_rev, _, states_rev = row(i, r, q2, qm2)
      sim.append(greedy_f1(states, states_rev, (1, 2)))
      fw_tok.append(tok)
      fw_mean.append(tok.mean())
      rev_mean.append(tok_rev.mean())
      pooled.append(pool)
  assert keys[0] == keys[2] and keys[3] == keys[5]
  check_readqg_metrics(m, loss, fw_tok, fw_mean, rev_mean, pooled, margin=0.7, tau=0.5, w_con=0.3, w_cal=2.0,
                       keys=keys, sim=sim if calibration == "margin" else None)
  assert ("calibration/similarity" in m) == (calibration == "margin")
  g = jax.jit(jax.grad(lambda s: readqg_loss_fn(model, rq)(s, params, batch)[0]))(soft)
  assert all(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(g))   # every soft prompt part learns


def test_decoder_pair_logprobs_with_a_common_prefix_run_once():
  """prefix=: the prompts' common start runs once for the batch; log-probs and gradients equal those
  of the whole prompts [pad; prefix; rest] (the reference path packs each pair member whole)."""
  model, params = _tiny_decoder()
  rest, pm, ch, cm, rj, rm = _pair_batch(seed=3)
  prefix = np.random.default_rng(5).integers(1, 37, 5).astype(np.int32)
  b, tp = rest.shape
  whole = np.zeros((b, tp + 5), np.int32)
  wmask = np.zeros((b, tp + 5), bool)
  for i in range(b):
    seq = np.concatenate([prefix, rest[i][pm[i]]])
    whole[i, -len(seq):], wmask[i, -len(seq):] = seq, True

  def total(p, with_prefix):
    fns = L.decoder_fns(model, p)
    if with_prefix:
      c, r = L.pair_logprobs(fns, rest, pm, ch, cm, rj, rm, prefix=jnp.asarray(prefix))
    else:
      c, r = L.pair_logprobs(fns, whole, wmask, ch, cm, rj, rm, share_prompt=False)
    return jnp.sum(c.total) - 0.5 * jnp.sum(r.total), (c.token, r.token)

  f = jax.jit(jax.value_and_grad(total, has_aux=True), static_argnums=1)
  (v1, (c1, r1)), g1 = f(params, True)
  (v2, (c2, r2)), g2 = f(params, False)
  np.testing.assert_allclose(v1, v2, rtol=1e-5)
  np.testing.assert_allclose(c1, c2, atol=2e-5)
  np.testing.assert_allclose(r1, r2, atol=2e-5)
  for a, b_ in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b_, atol=2e-5)
  # the prefix is attended to: another one changes the log-probs
  other = L.pair_logprobs(L.decoder_fns(model, params), rest, pm, ch, cm, rj, rm, prefix=jnp.asarray(prefix[::-1]))
  assert not np.allclose(np.asarray(other[0].token), np.asarray(c1), atol=1e-3)
  with pytest.raises(ValueError, match="share_prompt=True"):
    L.pair_logprobs(L.decoder_fns(model, params), rest, pm, ch, cm, rj, rm, share_prompt=False,
                    prefix=jnp.asarray(prefix))


def test_split_common_prefix():
  prompts = [[1, 2, 3, 4, 9], [1, 2, 3, 4], [1, 2, 3, 5, 6]]
  assert L.split_common_prefix(prompts, min_tokens=2) == ([1, 2, 3], [[4, 9], [4], [5, 6]])
  # every rest keeps a token, even when one prompt is the common start itself
  assert L.split_common_prefix([[7, 8], [7, 8, 9]], min_tokens=1) == ([7], [[8], [8, 9]])
  assert L.split_common_prefix(prompts, min_tokens=4) == ([], prompts)   # too short to be worth it
  assert L.split_common_prefix([], min_tokens=1) == ([], [])
