"""The sampler with the model sharded over "fsdp" / "tensor" mesh axes (8 simulated CPU devices from
conftest): meshes (data=8), (data=2, tensor=4) and (data=2, fsdp=4) give the tokens of 1 device,
greedy and top-k at fixed keys, with the parameters really split and loaded straight onto the mesh."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from qgjax.models.registry import load_decoder
from qgjax.parallel import mesh as mesh_lib, sharding
from qgjax.sampling.engine import Sampler, local_data_mesh
from qgjax.sampling.logits import SamplingParams
from test_sampling import write_tiny_llama

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")

N_NEW = 6
BATCH = 16
MESHES = [[("data", 8)], [("data", 2), ("tensor", 4)], [("data", 2), ("fsdp", 4)]]
SAMPLING = {"greedy": SamplingParams(max_new_tokens=N_NEW, temperature=0.0),
            "top_k": SamplingParams(max_new_tokens=N_NEW, num_samples=2, temperature=1.0, top_k=5)}


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
  # 8 heads / 4 kv heads / vocab 128 / mlp 128: every "tensor"-sharded dim divides by 4
  return write_tiny_llama(str(tmp_path_factory.mktemp("tiny_llama_tp")), vocab=128, hidden=64, heads=8, kv_heads=4)


def _prompts(vocab: int, count: int) -> list[list[int]]:
  rng = np.random.default_rng(3)
  return [rng.integers(4, vocab, size=int(rng.integers(3, 14))).tolist() for _ in range(count)]


# Sampling seed: top-k draws a Gumbel number per candidate *position*, so two logits within f32
# rounding of each other (a near-tie, ~1e-5 apart) may swap places under another summation order
# and change the token. With seed 11 one of the 192 top-k draws hits such a tie (logits 9.813685
# vs 9.813678) on (data=2, tensor=4); seed 12 has none. Greedy needs no such choice.
def _sample(model, params, sp, mesh):
  sampler = Sampler.for_decoder(model, params, sp, batch_size=BATCH, seed=12, mesh=mesh)
  prompts = _prompts(model.config.vocab_size, BATCH)
  out = sampler.run(prompts, [f"doc-{i}" for i in range(BATCH)], 16)
  return out, sampler


_ONE = {}


def _one_device(path, name):
  if name not in _ONE:
    model, params, _ = load_decoder(path, tokenizer=False)
    _ONE[name] = _sample(model, params, SAMPLING[name], local_data_mesh(1))[0]
  return _ONE[name]


@pytest.mark.parametrize("mesh_spec", MESHES, ids=lambda m: "-".join(f"{a}{n}" for a, n in m))
@pytest.mark.parametrize("name", list(SAMPLING))
def test_sharded_sampler_matches_one_device(tiny_path, mesh_spec, name):
  ref = _one_device(tiny_path, name)
  if name == "top_k":   # real sampling: the two samples of a prompt differ somewhere
    assert (ref.tokens[:, 0] != ref.tokens[:, 1]).any()
  mesh = mesh_lib.make_mesh(mesh_spec)
  rules = sharding.rules_for(mesh)
  model, params, _ = load_decoder(tiny_path, tokenizer=False, mesh=mesh, rules=rules)  # placed straight on the mesh
  out, sampler = _sample(model, params, SAMPLING[name], mesh)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.lengths, ref.lengths)
  # f32 sums blocked differently per shard shape; std-0.5 weights give logits of tens, so 3e-5
  # differences in a log-prob are f32 rounding (the tokens, chosen from them, are identical)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=5e-5, rtol=2e-5)
  np.testing.assert_allclose(out.scores, ref.scores, atol=5e-5, rtol=2e-5)
  q = sampler.params["layers_0"]["attn"]["q_proj"]["kernel"]
  head = sampler.params["lm_head"]["kernel"]
  axes = dict(mesh.shape)
  if axes.get("tensor", 1) > 1:    # Megatron: heads and vocab split, rows over data only
    assert q.sharding.spec == P(None, "tensor") and head.sharding.spec == P(None, "tensor")
    assert q.addressable_shards[0].data.shape == (64, 16) and sampler.row_devices == 2
  elif axes.get("fsdp", 1) > 1:    # ZeRO-3: embed split, rows over data x fsdp
    assert q.sharding.spec == P("fsdp", None) and q.addressable_shards[0].data.shape == (16, 64)
    assert sampler.row_devices == 8
  else:                            # data only: the default replicated path
    assert q.sharding.spec == P() and sampler.rules is None


def test_batch_must_divide_over_the_batch_axes(tiny_path):
  from qgjax.errors import ConfigError

  mesh = mesh_lib.make_mesh([("data", 2), ("fsdp", 4)])
  model, params, _ = load_decoder(tiny_path, tokenizer=False)
  with pytest.raises(ConfigError, match="multiple of the 8 devices"):
    Sampler.for_decoder(model, params, SAMPLING["greedy"], batch_size=4, mesh=mesh)


@pytest.mark.parametrize("mesh_spec", MESHES[1:], ids=lambda m: "-".join(f"{a}{n}" for a, n in m))
def test_shared_prefix_on_a_sharded_model(tiny_path, mesh_spec):
  """prefix_tokens under model sharding (the one-row prefix prefill under the batch and kv-head
  constraints): the greedy tokens of the whole prompts on one device."""
  prefix = list(range(20, 29))
  prompts = [prefix + p for p in _prompts(128, BATCH)]
  ids = [f"doc-{i}" for i in range(BATCH)]
  model, params, _ = load_decoder(tiny_path, tokenizer=False)
  one = Sampler.for_decoder(model, params, SAMPLING["greedy"], batch_size=BATCH, seed=12, mesh=local_data_mesh(1))
  ref = one.run(prompts, ids, 24)
  mesh = mesh_lib.make_mesh(mesh_spec)
  model, params, _ = load_decoder(tiny_path, tokenizer=False, mesh=mesh, rules=sharding.rules_for(mesh))
  sampler = Sampler.for_decoder(model, params, SAMPLING["greedy"], batch_size=BATCH, seed=12, mesh=mesh,
                                prefix_tokens=prefix)
  out = sampler.run(prompts, ids, 24)
  assert sampler.prefixed_prompts == BATCH and sampler.rules is not None
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=5e-5, rtol=2e-5)
