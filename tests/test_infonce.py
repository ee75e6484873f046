"""InfoNCE: global-batch negatives on 8 simulated devices equal a numpy reference."""

import json
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from loss_references import infonce_numpy
from qgjax.train.infonce import infonce_loss


def _data(b=16, h=2, d=8, seed=0):
  rng = np.random.default_rng(seed)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  q = unit(rng.standard_normal((b, d))).astype(np.float32)
  pos = unit(q + 0.5 * rng.standard_normal((b, d))).astype(np.float32)
  neg = unit(rng.standard_normal((b, h, d))).astype(np.float32)
  return q, pos, neg


def test_needs_eight_devices():
  assert len(jax.devices()) >= 8, "conftest sets --xla_force_host_platform_device_count=8"


@pytest.mark.parametrize("with_neg", [True, False])
def test_global_batch_loss_matches_numpy_on_8_devices(with_neg):
  q, pos, neg = _data()
  neg = neg if with_neg else None
  ref = infonce_numpy(q, pos, neg, temperature=0.05)
  mesh = Mesh(np.asarray(jax.devices()[:8]), ("data",))
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("data", *([None] * (x.ndim - 1)))))
  args = (shard(q), shard(pos), None if neg is None else shard(neg))
  assert len(args[0].sharding.device_set) == 8 and args[0].addressable_shards[0].data.shape[0] == 2
  loss, metrics = jax.jit(lambda a, b, c: infonce_loss(a, b, c, temperature=0.05))(*args)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  # A per-device loss (only the 2 local rows as negatives) is a different number: the test can fail.
  local = np.mean([infonce_numpy(q[i:i + 2], pos[i:i + 2], None if neg is None else neg[i:i + 2], 0.05)
                   for i in range(0, 16, 2)])
  assert abs(local - ref) > 1e-2


def test_gradient_sharded_equals_single_device():
  q, pos, neg = _data(seed=1)
  mesh = Mesh(np.asarray(jax.devices()[:8]), ("data",))
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("data", *([None] * (x.ndim - 1)))))
  f = lambda a, b, c: infonce_loss(a, b, c, temperature=0.1)[0]
  g_sharded = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(shard(q), shard(pos), shard(neg))
  g_single = jax.grad(f, argnums=(0, 1, 2))(jnp.asarray(q), jnp.asarray(pos), jnp.asarray(neg))
  for a, b in zip(g_sharded, g_single):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  # Finite-difference check of one coordinate against the numpy reference.
  eps = 1e-3
  qp, qm = q.copy(), q.copy()
  qp[3, 2] += eps
  qm[3, 2] -= eps
  fd = (infonce_numpy(qp, pos, neg, 0.1) - infonce_numpy(qm, pos, neg, 0.1)) / (2 * eps)
  np.testing.assert_allclose(float(g_single[0][3, 2]), fd, rtol=2e-3, atol=1e-5)


def test_duplicate_documents_are_masked_and_weights():
  q, pos, neg = _data(b=8, h=2, seed=2)
  pos_key = np.arange(8, dtype=np.float32)
  pos_key[5] = pos_key[1]               # queries 1 and 5 share a positive document
  pos[5] = pos[1]
  neg_key = 100 + np.arange(16, dtype=np.float32).reshape(8, 2)
  neg_key[0, 1] = pos_key[3]            # a mined negative of query 0 is query 3's positive
  neg[0, 1] = pos[3]
  neg_key[2, 0] = pos_key[2]            # a mined negative equal to the query's own positive
  neg[2, 0] = pos[2]
  ref = infonce_numpy(q, pos, neg, 0.05, pos_key=pos_key, neg_key=neg_key)
  loss, _ = infonce_loss(jnp.asarray(q), jnp.asarray(pos), jnp.asarray(neg), temperature=0.05,
                         pos_key=jnp.asarray(pos_key), neg_key=jnp.asarray(neg_key))
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  unmasked, _ = infonce_loss(jnp.asarray(q), jnp.asarray(pos), jnp.asarray(neg), temperature=0.05)
  assert float(unmasked) > float(loss) + 1e-3
  w = np.ones(8, np.float32)
  w[[0, 4]] = 0
  wl, _ = infonce_loss(jnp.asarray(q), jnp.asarray(pos), jnp.asarray(neg), temperature=0.05,
                       pos_key=jnp.asarray(pos_key), neg_key=jnp.asarray(neg_key), weight=jnp.asarray(w))
  # rows 0 and 4 leave the mean, but their documents stay negatives of the other rows
  per_row = [_row_loss(q, pos, neg, pos_key, neg_key, i, 0.05) for i in range(8)]
  np.testing.assert_allclose(np.mean(per_row), ref, rtol=1e-6)
  np.testing.assert_allclose(float(wl), np.mean([per_row[i] for i in range(8) if w[i] > 0]), rtol=1e-5)


def _row_loss(q, pos, neg, pos_key, neg_key, i, t):
  cands = list(pos) + list(neg.reshape(-1, neg.shape[-1]))
  keys = list(pos_key) + list(neg_key.reshape(-1))
  logits = np.asarray([q[i] @ c / t for j, c in enumerate(cands) if not (j != i and keys[j] == pos_key[i])],
                      np.float64)
  return float(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - q[i] @ pos[i] / t)


def test_tuple_errors_name_the_file_and_line(tmp_path):
  from qgjax.data import demo_dir
  from qgjax.data.beir import Corpus
  from qgjax.errors import InputError
  from qgjax.train.infonce import build_columns, read_tuples

  src = tmp_path / "tuples.jsonl"
  good = {"query": "black holes", "pos_id": "demo-01", "neg_ids": ["demo-02"]}
  # line 2 is a skipped example (not a training tuple), line 4 names an unknown negative
  src.write_text("\n".join(json.dumps(r) for r in (good, {"skip": "too_few_negatives"}, good,
                                                  dict(good, neg_ids=["demo-99"]))) + "\n")
  tuples, where = read_tuples(str(src))
  assert len(tuples) == 3 and [line for _, line in where] == [1, 3, 4]
  corpus = Corpus(demo_dir() / "corpus.jsonl")
  with pytest.raises(InputError, match=r"tuples.jsonl:4, field 'neg_ids': document 'demo-99' is not in the "
                                       r"corpus .*corpus.jsonl \(wrong data.corpus\?\)"):
    build_columns(tuples, corpus, None, num_negatives=1, query_max_len=8, doc_max_len=8, where=where)
