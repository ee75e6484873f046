"""Mesh from config, logical rules -> NamedSharding, sharded state creation, and the 8-device train
step ((data=2, fsdp=4) and (data=2, tensor=4)) reproducing the 1-device losses (8 simulated CPU
devices from conftest)."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from qgjax.config import build_config
from qgjax.errors import ConfigError
from qgjax.parallel import backend, mesh as mesh_lib, sharding
from qgjax.train import lm_tasks
from qgjax.train.generator import Generator, _abstract_adapters
from qgjax.train.optim import make_optimizer
from qgjax.train.step import create_state, make_train_step, state_shardings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


def test_mesh_shape_and_errors():
  assert mesh_lib.mesh_shape([("data", -1), ("fsdp", 4), ("tensor", 1)], 8) == (("data", "fsdp", "tensor"), (2, 4, 1))
  with pytest.raises(ConfigError, match="needs 6 devices"):
    mesh_lib.mesh_shape([("data", 2), ("fsdp", 3)], 8)
  with pytest.raises(ConfigError, match="only one mesh axis may be -1"):
    mesh_lib.mesh_shape([("data", -1), ("fsdp", -1)], 8)
  m = mesh_lib.make_mesh([("data", -1), ("fsdp", 1)], jax.devices()[:1])
  assert dict(m.shape) == {"data": 1, "fsdp": 1}


def test_rules_and_fit_spec():
  mesh = mesh_lib.make_mesh([("data", 2), ("fsdp", 4)])
  rules = sharding.rules_for(mesh, [("mlp", "fsdp")])
  table = dict(rules)
  assert table["batch"] == ("data", "fsdp") and table["mlp"] == "fsdp" and table["vocab"] is None  # no tensor axis
  assert sharding.fit_spec(P("fsdp", None), (10, 3), mesh) == P(None, None)          # 10 % 4 != 0: replicated
  assert sharding.fit_spec(P(("data", "fsdp")), (4,), mesh) == P("data")             # keeps the part that divides
  assert sharding.fit_spec(P(("data", "fsdp")), (16,), mesh) == P(("data", "fsdp"))
  assert sharding.batch_devices(mesh, rules) == 8


def test_backend_and_dtype_policy():
  assert backend.detect_backend() == "cpu" and backend.detect_backend("tpu") == "cpu"   # falls back
  assert backend.compute_dtype("cpu") == jnp.float32
  assert backend.compute_dtype("gpu") == jnp.bfloat16 and backend.compute_dtype("tpu") == jnp.bfloat16
  assert backend.compute_dtype("tpu", "float32") == jnp.float32
  assert backend.attention_impl("gpu", jnp.bfloat16) == "cudnn" and backend.attention_impl("cpu") == "xla"
  with pytest.raises(ConfigError):
    backend.compute_dtype("cpu", "int7")


def test_sharded_init_and_put_batch():
  mesh = mesh_lib.make_mesh([("data", 2), ("fsdp", 4)])
  rules = sharding.rules_for(mesh)

  class M(nn.Module):
    @nn.compact
    def __call__(self, x):
      k = self.param("k", nn.with_logical_partitioning(nn.initializers.normal(), ("embed", "mlp")), (8, 6))
      return x @ k

  params, shard = sharding.sharded_init(M().init, mesh, rules, jax.random.key(0), jnp.ones((2, 8)))
  assert params["params"]["k"].sharding.spec == P("fsdp", None)
  assert len(params["params"]["k"].addressable_shards) == 8
  batch = sharding.put_batch({"x": np.arange(24).reshape(8, 3)}, mesh, rules)
  assert batch["x"].sharding.spec == P(("data", "fsdp"), None)
  np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(24).reshape(8, 3))


# ------------------------------------------------------------------------------------------------
# 8 devices == 1 device


def _generator(mode: str) -> Generator:
  from qgjax.models.decoder import DecoderConfig, DecoderLM
  from qgjax.models.lora import LoraConfig, init_lora

  cfg = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8)
  module = DecoderLM(cfg)
  args = (jax.random.key(0), jnp.ones((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32))
  params = jax.device_get(nn.unbox(module.init(*args)["params"]))
  abstract = jax.eval_shape(module.init, *args)["params"]
  if mode == "full":
    return Generator(module, None, params, {}, abstract, {}, "full")
  spec = LoraConfig(rank=4, alpha=8.0, targets="q_proj|v_proj|up_proj")
  lora = jax.device_get(init_lora(jax.random.key(1), params, spec))
  # non-zero B so the adapters change the outputs from step 1
  lora = jax.tree.map(lambda x: x + 0.05 * np.random.default_rng(x.size).standard_normal(x.shape).astype(x.dtype), lora)
  return Generator(module, None, lora, params, _abstract_adapters(lora, abstract), abstract, "lora", spec)


def _batches(n=3, b=8, tp=12, tc=6):
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n):
    pm = np.ones((b, tp), bool)
    for i in range(b):
      pm[i, : rng.integers(0, tp - 2)] = False
    cm, rm = (np.arange(tc)[None] < rng.integers(2, tc + 1, (b, 1)) for _ in range(2))
    out.append({"prompt": rng.integers(1, 64, (b, tp)).astype(np.int32), "prompt_mask": pm,
                "chosen": rng.integers(1, 64, (b, tc)).astype(np.int32), "chosen_mask": cm,
                "rejected": rng.integers(1, 64, (b, tc)).astype(np.int32), "rejected_mask": rm,
                "ref_chosen": rng.normal(-40, 3, b).astype(np.float32),
                "ref_rejected": rng.normal(-40, 3, b).astype(np.float32), "weight": np.ones(b, np.float32)})
  return out


_RUNS = {}


def _run_cached(mode, reference, n_devices, mesh_spec, accum=1):
  """Each configuration compiles and runs once per session (tests share the 8-device LoRA run)."""
  key = (mode, reference, n_devices, tuple(mesh_spec), accum)
  if key not in _RUNS:
    dpo = build_config(os.path.join(REPO, "configs", "dpo.py")).dpo
    dpo.update(beta=0.5, reference=reference, share_prompt=True)
    _RUNS[key] = _run(_generator(mode), jax.devices()[:n_devices], mesh_spec, dpo, accum)
  return _RUNS[key]


def _run(gen: Generator, devices, mesh_spec, dpo, accum=1):
  mesh = mesh_lib.make_mesh(mesh_spec, devices)
  rules = sharding.rules_for(mesh)
  optim = build_config(os.path.join(REPO, "configs", "dpo.py")).optim
  optim.update(lr=1e-2, warmup_steps=0, schedule="constant", grad_clip=1.0)
  tx, sched = make_optimizer(optim, 10)
  shard = state_shardings(gen.abstract_trainable, gen.abstract_frozen, tx, mesh, rules)
  state = create_state(gen.trainable, gen.frozen, shard, tx, mesh, rules)
  batches = _batches()
  step = make_train_step(lm_tasks.dpo_loss_fn(gen, dpo), tx, sched, mesh=mesh, rules=rules, shardings=shard,
                         example_batch=batches[0], accum_steps=accum)
  losses, accs, grad_norms = [], [], []
  for b in batches:
    state, m = step(state, sharding.put_batch(b, mesh, rules))
    losses.append(float(m["loss"]))
    accs.append(float(m["rewards/accuracy"]))
    grad_norms.append(float(m["grad_norm"]))
  return np.asarray(losses), accs, state, np.asarray(grad_norms)


@pytest.mark.slow
@pytest.mark.parametrize("mode,reference", [("lora", "adapters_off"), ("full", "precomputed")])
def test_eight_devices_match_one_device(mode, reference):
  one, acc1, s1, _ = _run_cached(mode, reference, 1, [("data", 1), ("fsdp", 1)])
  eight, acc8, s8, _ = _run_cached(mode, reference, 8, [("data", 2), ("fsdp", 4)])
  assert len(set(np.round(one, 4))) == 3, one        # the loss moves: the steps really train
  np.testing.assert_allclose(eight, one, atol=1e-5, rtol=0)
  assert acc1 == acc8
  # params are really split over fsdp on 8 devices (full mode: embed axis of every matrix)
  if mode == "full":
    emb = s8.params["embed_tokens"]["embedding"]
    assert emb.sharding.spec == P(None, "fsdp") and emb.addressable_shards[0].data.shape == (64, 8)
  else:  # LoRA: the base stays frozen and sharded; adapters match (Adam on full weights would
    # amplify summation-order noise of near-zero gradients into +-lr steps, so only LoRA compares params)
    assert s8.frozen["embed_tokens"]["embedding"].sharding.spec == P(None, "fsdp")
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.slow
def test_gradient_accumulation_matches_full_batch():
  full, _, s_full, _ = _run_cached("lora", "adapters_off", 8, [("data", 2), ("fsdp", 4)])
  acc, _, s_acc, _ = _run_cached("lora", "adapters_off", 8, [("data", 2), ("fsdp", 4)], accum=2)
  # equal microbatches: the mean of microbatch means is the batch mean; the update is the same
  np.testing.assert_allclose(acc, full, atol=1e-5)
  for a, b in zip(jax.tree.leaves(s_full.params), jax.tree.leaves(s_acc.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode,reference", [("lora", "adapters_off"), ("full", "precomputed")])
def test_tensor_parallel_step_matches_one_device(mode, reference):
  """(data=2, tensor=4): heads / kv heads / mlp / vocab split over "tensor" (Megatron), rows over data."""
  one, acc1, _, gn1 = _run_cached(mode, reference, 1, [("data", 1), ("fsdp", 1)])
  tp, acc_tp, s_tp, gn_tp = _run_cached(mode, reference, 8, [("data", 2), ("tensor", 4)])
  assert len(set(np.round(one, 4))) == 3, one
  np.testing.assert_allclose(tp, one, atol=1e-5, rtol=0)
  np.testing.assert_allclose(gn_tp, gn1, atol=1e-5, rtol=1e-5)
  assert acc1 == acc_tp
  base = s_tp.params if mode == "full" else s_tp.frozen
  emb, q = base["embed_tokens"]["embedding"], base["layers"]["attn"]["q_proj"]["kernel"]
  assert emb.sharding.spec == P("tensor", None) and emb.addressable_shards[0].data.shape == (16, 32)
  assert q.sharding.spec == P(None, None, "tensor") and q.addressable_shards[0].data.shape == (2, 32, 8)
