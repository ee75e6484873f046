"""T5 v1.0 / v1.1 vs transformers PyTorch (tiny random configs): logits, caches, loaders, savers."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qgjax.errors import CheckpointMismatchError
from qgjax.models import t5
from qgjax.models.hf_checkpoint import read_safetensors_dir, write_safetensors_dir

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.torch_ref

TOL = 1e-4
LOGICAL_NAMES = {"vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "layers", "relpos_buckets", "classes",
                 "prompt_len", None}


def _hf_config(version: str):
  # Few buckets / a short max_distance so that short test sequences reach the log-spaced buckets.
  return transformers.T5Config(
      vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=3, num_heads=4,
      relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.1,
      feed_forward_proj="relu" if version == "v1.0" else "gated-gelu", decoder_start_token_id=0)


def _randomise(model, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
  return model


def _write_checkpoint(version: str, path) -> str:
  """v1.0: tied head, save_pretrained. v1.1: the hub layout of Flan-T5 (separate lm_head.weight,
  config with tie_word_embeddings false), written by hand since transformers 5 always ties T5."""
  torch.manual_seed(0 if version == "v1.0" else 1)
  model = _randomise(transformers.T5ForConditionalGeneration(_hf_config(version)), seed=2).eval()
  path = str(path)
  if version == "v1.0":
    model.save_pretrained(path, safe_serialization=True)
    return path
  tensors = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()
             if not k.endswith("embed_tokens.weight")}
  tensors["lm_head.weight"] = np.random.default_rng(3).normal(size=tensors["shared.weight"].shape).astype(np.float32)
  config = model.config.to_dict()
  config.pop("scale_decoder_outputs", None)
  config["tie_word_embeddings"] = False
  write_safetensors_dir(tensors, path, config)
  return path


def _reference(path):
  ref = transformers.T5ForConditionalGeneration.from_pretrained(path).eval()
  return ref


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  enc_len, dec_len = (13, 7, 3), (9, 4, 6)
  tokens = np.zeros((3, max(enc_len)), np.int64)
  mask = np.zeros_like(tokens)
  dec = np.zeros((3, max(dec_len)), np.int64)
  dec_mask = np.zeros_like(dec)
  for i, (n, m) in enumerate(zip(enc_len, dec_len)):
    tokens[i, :n] = rng.integers(2, 99, size=n)
    mask[i, :n] = 1
    dec[i, 1:m] = rng.integers(2, 99, size=m - 1)  # dec[:, 0] = decoder start (pad id 0)
    dec_mask[i, :m] = 1
  return tokens, mask, dec, dec_mask


@pytest.fixture(scope="module", params=["v1.0", "v1.1"])
def checkpoint(request, tmp_path_factory):
  version = request.param
  path = _write_checkpoint(version, tmp_path_factory.mktemp(f"t5_{version}") / "model")
  model, params, tokenizer = t5.load_t5(path)
  return version, path, model, params


def test_config_reads_head_layout(checkpoint):
  version, _, model, params = checkpoint
  c = model.config
  if version == "v1.0":
    assert (c.tie_word_embeddings, c.scale_decoder_outputs, c.is_gated, c.act_name) == (True, True, False, "relu")
    assert "lm_head" not in params
  else:
    assert (c.tie_word_embeddings, c.scale_decoder_outputs, c.is_gated, c.act_name) == (False, False, True, "gelu_new")
    assert params["lm_head"]["kernel"].shape == (32, 99)
  assert (c.num_layers, c.num_decoder_layers) == (2, 3)


def test_teacher_forced_logits_match_torch(checkpoint):
  version, path, model, params = checkpoint
  ref = _reference(path)
  assert ref.config.scale_decoder_outputs == (version == "v1.0")
  tokens, mask, dec, dec_mask = _inputs()
  with torch.no_grad():
    out = ref(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask), decoder_input_ids=torch.tensor(dec),
              decoder_attention_mask=torch.tensor(dec_mask), output_hidden_states=True)
  got = np.asarray(model.apply({"params": params}, jnp.asarray(tokens), jnp.asarray(mask, bool), jnp.asarray(dec),
                               jnp.asarray(dec_mask, bool)))
  want = out.logits.numpy()
  assert got.shape == want.shape == (3, 9, 99) and got.dtype == np.float32
  np.testing.assert_array_less(np.abs(got - want).max(), TOL)
  enc = np.asarray(model.apply({"params": params}, jnp.asarray(tokens), jnp.asarray(mask, bool), method=t5.T5Model.encode))
  np.testing.assert_array_less(np.abs(enc - out.encoder_last_hidden_state.numpy()).max(), TOL)


def test_incremental_decode_equals_full_forward(checkpoint):
  _, _, model, params = checkpoint
  tokens, mask, dec, _ = _inputs(seed=1)
  tokens, mask, dec = jnp.asarray(tokens), jnp.asarray(mask, bool), jnp.asarray(dec)
  full = model.apply({"params": params}, tokens, mask, dec)
  enc = model.apply({"params": params}, tokens, mask, method=t5.T5Model.encode)
  max_len = 12
  decode = jax.jit(lambda p, tok, cache, i: model.apply({"params": p}, tok, None, mask, cache, i,
                                                         method=t5.T5Model.decode))
  # Prefill three tokens, then one token at a time.
  cache = t5.init_decoder_cache(model, params, enc, mask, max_len)
  assert cache.self_k.shape == (3, 3, max_len, 4, 8) and cache.cross_k.shape == (3, 3, 13, 4, 8)
  logits, cache = decode(params, dec[:, :3], cache, 0)
  steps = [logits]
  for i in range(3, dec.shape[1]):
    logits, cache = decode(params, dec[:, i:i + 1], cache, i)
    steps.append(logits)
  inc = np.concatenate([np.asarray(s) for s in steps], axis=1)
  np.testing.assert_allclose(inc, np.asarray(full), atol=1e-5)
  assert decode._cache_size() == 2  # one prefill shape, one single-token shape


def test_saved_checkpoint_loads_in_transformers(checkpoint, tmp_path):
  version, path, model, params = checkpoint
  out = t5.save_t5_hf(params, model.config, str(tmp_path / "saved"))
  saved, original = read_safetensors_dir(out), read_safetensors_dir(path)
  for name, t in saved.items():
    np.testing.assert_array_equal(t, original[name])
  back = _reference(out)
  tokens, mask, dec, dec_mask = _inputs(seed=2)
  with torch.no_grad():
    want = back(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask), decoder_input_ids=torch.tensor(dec),
                decoder_attention_mask=torch.tensor(dec_mask)).logits.numpy()
  got = model.apply({"params": params}, jnp.asarray(tokens), jnp.asarray(mask, bool), jnp.asarray(dec),
                    jnp.asarray(dec_mask, bool))
  np.testing.assert_array_less(np.abs(np.asarray(got) - want).max(), TOL)


def test_bf16_and_sharded_checkpoints(checkpoint, tmp_path):
  _, path, model, params = checkpoint
  out = t5.save_t5_hf(params, model.config, str(tmp_path / "sharded"), max_shard_bytes=20_000)
  assert os.path.isfile(os.path.join(out, "model.safetensors.index.json"))
  model16, params16, _ = t5.load_t5(out, dtype="bfloat16")
  assert model16.config.dtype == "bfloat16" and params16["shared"]["embedding"].dtype == jnp.bfloat16
  tokens, mask, dec, dec_mask = (jnp.asarray(x) for x in _inputs(seed=3))
  want = model.apply({"params": params}, tokens, mask.astype(bool), dec, dec_mask.astype(bool))
  got = model16.apply({"params": params16}, tokens, mask.astype(bool), dec, dec_mask.astype(bool))
  assert got.dtype == jnp.float32
  err = np.abs(np.asarray(got) - np.asarray(want)).max() / np.abs(np.asarray(want)).max()
  assert err < 0.05, err


def test_embeds_path_equals_token_path(checkpoint):
  _, _, model, params = checkpoint
  tokens, mask, _, _ = _inputs()
  tokens, mask = jnp.asarray(tokens), jnp.asarray(mask, bool)
  embeds = model.apply({"params": params}, tokens, method=t5.T5Model.embed)
  a = model.apply({"params": params}, tokens, mask, method=t5.T5Model.encode)
  b = model.apply({"params": params}, None, mask, embeds=embeds, method=t5.T5Model.encode)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_relative_position_buckets_match_transformers():
  ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
  rel = np.arange(-300, 300)
  for buckets, dist in ((32, 128), (8, 20)):
    for bidirectional in (True, False):
      want = ref(torch.tensor(rel), bidirectional=bidirectional, num_buckets=buckets, max_distance=dist).numpy()
      got = t5.relative_position_bucket(jnp.asarray(rel), bidirectional, buckets, dist)
      np.testing.assert_array_equal(np.asarray(got), want)


def test_mismatched_checkpoint_lists_every_tensor(tmp_path):
  path = _write_checkpoint("v1.0", tmp_path / "m")
  tensors = read_safetensors_dir(path)
  del tensors["decoder.block.2.layer.1.EncDecAttention.k.weight"]
  tensors["encoder.block.0.layer.1.DenseReluDense.wi.weight"] = np.zeros((36, 32), np.float32)
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  write_safetensors_dir(tensors, path, config)
  with pytest.raises(CheckpointMismatchError) as e:
    t5.load_t5(path)
  assert "decoder.block.2.layer.1.EncDecAttention.k.weight" in str(e.value)
  assert "encoder.block.0.layer.1.DenseReluDense.wi.weight: checkpoint (36, 32) vs model (37, 32)" in str(e.value)
  # A v1.1 config on a v1.0 checkpoint: the gated projections are missing, `wi` is unexpected.
  config["feed_forward_proj"] = "gated-gelu"
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  with pytest.raises(CheckpointMismatchError, match=r"DenseReluDense\.wi_0\.weight"):
    t5.load_t5(path)


@pytest.mark.slow  # compiling the remat + dropout gradient takes ~40 s on 2 busy cores
def test_params_have_logical_axes_and_training_mode_runs():
  config = t5.T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_decoder_layers=2, num_heads=2,
                       relative_attention_num_buckets=8, relative_attention_max_distance=16,
                       feed_forward_proj="gated-gelu", tie_word_embeddings=False, scale_decoder_outputs=False,
                       remat=True)
  model = t5.T5Model(config)
  tokens = jnp.asarray([[5, 6, 7, 1], [8, 9, 1, 0]])
  mask = tokens != 0
  dec = t5.shift_right(jnp.asarray([[10, 11, 1], [12, 1, -100]]), config)
  np.testing.assert_array_equal(dec, [[0, 10, 11], [0, 12, 1]])
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, mask, dec))
  leaves = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(x, nn.LogicallyPartitioned) and set(x.names) <= LOGICAL_NAMES
             and len(x.names) == len(x.value.shape) for x in leaves)
  params = t5.init_params(model, seed=0)

  def loss(p, rng):
    logits = model.apply({"params": p}, tokens, mask, dec, deterministic=False, rngs={"dropout": rng})
    return jnp.mean(jax.nn.logsumexp(logits, -1))

  grad_fn = jax.jit(jax.value_and_grad(loss))
  l1, g = grad_fn(params, jax.random.PRNGKey(1))
  l2, _ = grad_fn(params, jax.random.PRNGKey(2))
  l1_again, _ = grad_fn(params, jax.random.PRNGKey(1))
  assert l1 != l2 and l1 == l1_again  # dropout is active and keyed
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g))
