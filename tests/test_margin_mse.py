"""MarginMSE (GPL): loss and gradients against a float64 numpy reference, sharded over 8 devices."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from loss_references import margin_mse_numpy
from qgjax.train.margin_mse import margin_mse_loss


def _data(b=16, h=3, d=8, seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: rng.standard_normal(s).astype(np.float32)
  return f(b, d), f(b, d), f(b, h, d), 3 * f(b), 3 * f(b, h)


def test_loss_and_gradients_match_numpy_float64_on_8_devices():
  q, pos, neg, ce_pos, ce_neg = _data()
  weight = np.ones(16, np.float32)
  weight[[3, 11]] = 0.0                              # filler rows drop out of the mean
  mesh = Mesh(np.asarray(jax.devices()[:8]), ("data",))
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("data", *([None] * (x.ndim - 1)))))
  f = lambda a, b, c, cp, cn, w: margin_mse_loss(a, b, c, cp, cn, weight=w)
  (loss, metrics), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(
      *map(shard, (q, pos, neg, ce_pos, ce_neg, weight)))
  ref, g_q, g_pos, g_neg = margin_mse_numpy(q, pos, neg, ce_pos, ce_neg, weight)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  for got, want in zip(grads, (g_q, g_pos, g_neg)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-6)
  assert np.abs(g_q[3]).max() == 0 and np.abs(g_q).max() > 0.1    # weight 0 rows get no gradient
  s_pos, s_neg = np.einsum("bd,bd->b", q, pos), np.einsum("bd,bhd->bh", q, neg)
  keep = weight > 0
  np.testing.assert_allclose(float(metrics["accuracy"]), np.mean((s_pos > s_neg.max(1))[keep]), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["target_margin"]), np.mean((ce_pos[:, None] - ce_neg)[keep]), rtol=1e-5)


def test_zero_when_the_student_margin_equals_the_teachers():
  q, pos, neg, _, _ = _data(b=4, h=2, seed=1)
  s_pos, s_neg = np.einsum("bd,bd->b", q, pos), np.einsum("bd,bhd->bh", q, neg)
  loss, _ = margin_mse_loss(q, pos, neg, s_pos + 5.0, s_neg + 5.0)     # a shifted teacher: same margins
  assert abs(float(loss)) < 1e-10
  loss, _ = margin_mse_loss(q, pos, neg, s_pos + 1.0, s_neg)           # every margin off by 1
  np.testing.assert_allclose(float(loss), 1.0, rtol=1e-5)
