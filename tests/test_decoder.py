"""DecoderLM parity with transformers' PyTorch Llama / Qwen2 (tiny random configs, f32, CPU).

The torch model is saved with `save_pretrained(safe_serialization=True)` and loaded back through
`load_decoder`, so the HF-directory loader is exercised by every parity test.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from qgjax.errors import CheckpointMismatchError, ConfigError
from qgjax.models import registry
from qgjax.models.decoder import DecoderConfig, DecoderLM, init_cache, positions_from_mask
from qgjax.models.layers import rope_inv_freq

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.torch_ref

TOL = 1e-4
BASE = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=128, rms_norm_eps=1e-5,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 500000.0}

CASES = {
    # untied head, llama3 rope scaling, grouped-query attention
    "llama_llama3_untied": ("llama", dict(tie_word_embeddings=False, rope_parameters=LLAMA3_ROPE)),
    # tied head, linear rope scaling, attention (q/k/v/o) and MLP biases
    "llama_linear_tied_bias": ("llama", dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                                             rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                              "rope_theta": 10000.0})),
    # Qwen2: q/k/v bias, no o bias, tied
    "qwen2_tied": ("qwen2", dict(tie_word_embeddings=True, rope_parameters={"rope_type": "default",
                                                                            "rope_theta": 1000000.0})),
    "qwen2_untied_mha": ("qwen2", dict(tie_word_embeddings=False, num_key_value_heads=4)),
}


def _torch_model(kind: str, overrides: dict, seed: int = 0):
  kw = {**BASE, **overrides}
  if kind == "llama":
    cfg, cls = transformers.LlamaConfig(**kw), transformers.LlamaForCausalLM
  else:
    cfg, cls = transformers.Qwen2Config(**kw), transformers.Qwen2ForCausalLM
  torch.manual_seed(seed)
  model = cls(cfg).eval()
  with torch.no_grad():  # O(1) logits: random weights everywhere, norm scales around 1, non-zero biases
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.15 * torch.randn_like(p))
  if cfg.tie_word_embeddings:
    model.tie_weights()
  return model


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
  kind, overrides = CASES[request.param]
  tm = _torch_model(kind, overrides)
  d = str(tmp_path_factory.mktemp(request.param))
  tm.save_pretrained(d, safe_serialization=True)
  model, params, _ = registry.load_decoder(d, tokenizer=False)
  return tm, model, params


def _torch_logits(tm, tokens, mask, positions):
  with torch.no_grad():
    out = tm(input_ids=torch.tensor(np.asarray(tokens)), attention_mask=torch.tensor(np.asarray(mask, np.int64)),
             position_ids=torch.tensor(np.asarray(positions, np.int64)))
  return out.logits.numpy()


def _batch(seed=0, b=3, t=9, vocab=96):
  rng = np.random.default_rng(seed)
  return rng.integers(3, vocab, size=(b, t)).astype(np.int32)


def _apply(model, params, *args, **kw):
  return model.apply({"params": params}, *args, **kw)


def test_left_padding_matches_torch(pair):
  tm, model, params = pair
  tokens = _batch()
  mask = np.ones_like(tokens, bool)
  mask[1, :3] = False   # left padded rows
  mask[2, :8] = False   # a single real token
  tokens = np.where(mask, tokens, 0)
  pos = np.asarray(positions_from_mask(jnp.asarray(mask)))
  ref = _torch_logits(tm, tokens, mask, pos)
  got, cache = _apply(model, params, tokens, pos, mask)
  assert cache is None and got.dtype == jnp.float32
  err = np.abs(np.asarray(got) - ref)[mask].max()
  assert err <= TOL, err


def test_right_padding_matches_torch(pair):
  tm, model, params = pair
  tokens = _batch(1)
  mask = np.ones_like(tokens, bool)
  mask[0, 5:] = False
  mask[2, 1:] = False
  pos = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  ref = _torch_logits(tm, tokens, mask, pos)
  got, _ = _apply(model, params, tokens, pos, mask)
  err = np.abs(np.asarray(got) - ref)[mask].max()
  assert err <= TOL, err


def test_incremental_decode_equals_full_forward(pair):
  """Left-padded prompt of 6 slots, then a 2-token chunk, then 1 token at a time into a 12-slot cache."""
  tm, model, params = pair
  full = _batch(2, t=11)
  prompt_mask = np.ones((3, 6), bool)
  prompt_mask[1, :2] = False
  prompt_mask[2, :5] = False
  full_mask = np.concatenate([prompt_mask, np.ones((3, 5), bool)], axis=1)
  full = np.where(full_mask, full, 0)
  full_pos = np.asarray(positions_from_mask(jnp.asarray(full_mask)))
  ref_full, _ = _apply(model, params, full, full_pos, full_mask)
  ref_torch = _torch_logits(tm, full, full_mask, full_pos)
  assert np.abs(np.asarray(ref_full) - ref_torch)[full_mask].max() <= TOL

  max_len = 12
  cache = init_cache(model.config, 3, max_len)
  kv_mask = np.zeros((3, max_len), bool)
  step = jax.jit(lambda p, tok, pos, m, c, i: _apply(model, p, tok, pos, m, c, i))
  chunks = [(0, 6), (6, 8)] + [(i, i + 1) for i in range(8, 11)]
  for start, stop in chunks:
    kv_mask[:, start:stop] = full_mask[:, start:stop]
    logits, cache = step(params, full[:, start:stop], full_pos[:, start:stop], kv_mask, cache, start)
    m = full_mask[:, start:stop]
    err = np.abs(np.asarray(logits) - np.asarray(ref_full)[:, start:stop])[m].max()
    assert err <= TOL, (start, err)
  assert cache.k.shape == (model.config.num_layers, 3, max_len, model.config.num_kv_heads, model.config.head_dim)


def test_unscanned_layers_and_hidden(pair, tmp_path):
  tm, model, params = pair
  cfg = model.config.replace(scan_layers=False)
  from qgjax.models.decoder_hf import params_from_hf, params_to_hf
  p2 = params_from_hf(params_to_hf(params, model.config), cfg)
  assert "layers_1" in p2 and "layers" not in p2
  tokens = _batch(3)
  mask = np.ones_like(tokens, bool)
  pos = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  a, _, ha = _apply(model, params, tokens, pos, mask, return_hidden=True)
  b, _, hb = _apply(DecoderLM(cfg), p2, tokens, pos, mask, return_hidden=True)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  with torch.no_grad():
    ref_h = tm(input_ids=torch.tensor(tokens), output_hidden_states=True).hidden_states[-1].numpy()
  assert np.abs(np.asarray(ha) - ref_h).max() <= TOL
  # embeds= replaces the lookup
  c, _ = _apply(model, params, None, pos, mask, embeds=_apply(model, params, tokens, method=DecoderLM.embed))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def test_save_decoder_hf_roundtrip_through_transformers(pair, tmp_path):
  tm, model, params = pair
  out = str(tmp_path / "saved")
  registry.save_decoder_hf(params, model.config, None, out)
  back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  tokens = _batch(4)
  mask = np.ones_like(tokens, bool)
  pos = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  np.testing.assert_allclose(_torch_logits(back, tokens, mask, pos), _torch_logits(tm, tokens, mask, pos), atol=1e-6)
  model2, params2, _ = registry.load_decoder(out, tokenizer=False)
  assert model2.config == model.config
  jax.tree.map(np.testing.assert_array_equal, params2, params)


@pytest.mark.parametrize("scaling", [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
])
def test_rope_inv_freq_matches_transformers(scaling):
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  hf = transformers.LlamaConfig(hidden_size=128, num_attention_heads=4, max_position_embeddings=256,
                                rope_parameters={**scaling, "rope_theta": 50000.0})
  ref, ref_factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf, "cpu")
  cfg = DecoderConfig.from_hf(hf.to_dict())
  got, factor = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
  np.testing.assert_allclose(got, ref.numpy(), rtol=1e-6)
  assert factor == pytest.approx(ref_factor)


@pytest.mark.parametrize("offset", [0, 100])
def test_rope_table_equals_hand_computed_angles_in_and_beyond_the_table(offset):
  """The table path (positions < max_positions) and the computed fallback (any beyond) both give
  cos/sin of the f32 angle position * inv_freq (f64 numpy reference), inside jit."""
  from qgjax.models.layers import rope_cos_sin
  inv, factor = rope_inv_freq(16, 10000.0, None)
  pos = np.array([[0, 1, 5, 63], [7, 8, 9, 2]], np.int32) + offset      # offset 100: past the 64-entry table
  cos, sin = jax.jit(lambda p: rope_cos_sin(p, inv, factor, 64))(jnp.asarray(pos))
  angles = (pos.astype(np.float32)[..., None] * inv[None, None, :]).astype(np.float64)
  angles = np.concatenate([angles, angles], axis=-1)
  np.testing.assert_allclose(np.asarray(cos), np.cos(angles), atol=2e-6)
  np.testing.assert_allclose(np.asarray(sin), np.sin(angles), atol=2e-6)


def _save_tiny(tmp_path, **overrides):
  tm = _torch_model("llama", dict(tie_word_embeddings=False, **overrides))
  d = str(tmp_path / "ckpt")
  tm.save_pretrained(d, safe_serialization=True)
  return d


def test_mismatched_checkpoint_lists_tensors(tmp_path):
  d = _save_tiny(tmp_path)
  from qgjax.models.hf_checkpoint import read_safetensors_dir, write_safetensors_dir
  tensors = read_safetensors_dir(d)
  del tensors["model.layers.1.mlp.up_proj.weight"]
  tensors["model.layers.0.self_attn.q_proj.weight"] = tensors["model.layers.0.self_attn.q_proj.weight"][:32]
  tensors["model.extra_thing.weight"] = np.zeros(3, np.float32)
  with open(os.path.join(d, "config.json")) as f:
    cfg = json.load(f)
  bad = str(tmp_path / "bad")
  write_safetensors_dir(tensors, bad, cfg)
  with pytest.raises(CheckpointMismatchError) as e:
    registry.load_decoder(bad, tokenizer=False)
  msg = str(e.value)
  assert "missing (1): model.layers.1.mlp.up_proj.weight" in msg
  assert "unexpected (1): model.extra_thing.weight" in msg
  assert "model.layers.0.self_attn.q_proj.weight: checkpoint (32, 64) vs model (64, 64)" in msg
  # a config that does not fit the tensors (more layers) is an error too, not a random init
  cfg["num_hidden_layers"] = 3
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(cfg, f)
  with pytest.raises(CheckpointMismatchError, match="missing .*model.layers.2"):
    registry.load_decoder(d, tokenizer=False)


def test_bf16_load(tmp_path):
  d = _save_tiny(tmp_path)
  m32, p32, _ = registry.load_decoder(d, tokenizer=False)
  m16, p16, _ = registry.load_decoder(d, tokenizer=False, dtype="bfloat16")
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p16))
  assert m16.config.dtype == "bfloat16"
  tokens = _batch(5)
  mask = np.ones_like(tokens, bool)
  pos = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  a, _ = _apply(m32, p32, tokens, pos, mask)
  b, _ = _apply(m16, p16, tokens, pos, mask)
  assert b.dtype == jnp.float32
  scale = float(np.abs(np.asarray(a)).max())
  assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) < 0.1 * scale
  assert (np.asarray(a).argmax(-1) == np.asarray(b).argmax(-1)).mean() > 0.8


def test_registry_errors(tmp_path):
  with pytest.raises(ConfigError, match="smollm2-135m-instruct"):
    registry.resolve("no-such-model")
  with pytest.raises(CheckpointMismatchError, match="config.json"):
    registry.load_decoder(str(tmp_path), tokenizer=False)
  with pytest.raises(ConfigError, match="model_type"):
    DecoderConfig.from_hf({**BASE, "model_type": "gpt2"})
