"""HF (Llama / Qwen2 safetensors) tensor names <-> the DecoderLM parameter tree.

  params = params_from_hf(read_safetensors_dir(d), config, source=d)   # strict: CheckpointMismatchError
  tensors = params_to_hf(params, config)                                 # {hf_name: np.ndarray [out, in]}
  hf_layout(config)                     # {flax_path: (hf names, transposed)} (qgjax.models.sharded_load)
  save_decoder_hf(params, config, tokenizer, out_dir)                    # AutoModelForCausalLM-readable dir
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

from qgjax.models.decoder import DecoderConfig
from qgjax.models.hf_checkpoint import check_fit, flatten_tree, save_tokenizer, unflatten_tree, write_safetensors_dir
from qgjax.models.layers import as_dtype

# Flax path under a layer -> (HF suffix under model.layers.{i}, is a linear kernel [in, out]).
_LAYER_MAP = {
    "input_layernorm/scale": ("input_layernorm.weight", False),
    "post_attention_layernorm/scale": ("post_attention_layernorm.weight", False),
    "attn/q_proj/kernel": ("self_attn.q_proj.weight", True),
    "attn/k_proj/kernel": ("self_attn.k_proj.weight", True),
    "attn/v_proj/kernel": ("self_attn.v_proj.weight", True),
    "attn/o_proj/kernel": ("self_attn.o_proj.weight", True),
    "attn/q_proj/bias": ("self_attn.q_proj.bias", False),
    "attn/k_proj/bias": ("self_attn.k_proj.bias", False),
    "attn/v_proj/bias": ("self_attn.v_proj.bias", False),
    "attn/o_proj/bias": ("self_attn.o_proj.bias", False),
    "mlp/gate_proj/kernel": ("mlp.gate_proj.weight", True),
    "mlp/up_proj/kernel": ("mlp.up_proj.weight", True),
    "mlp/down_proj/kernel": ("mlp.down_proj.weight", True),
    "mlp/gate_proj/bias": ("mlp.gate_proj.bias", False),
    "mlp/up_proj/bias": ("mlp.up_proj.bias", False),
    "mlp/down_proj/bias": ("mlp.down_proj.bias", False),
}
# Tensors HF checkpoints may carry that the model does not use.
IGNORED_HF_TENSORS = ("rotary_emb.inv_freq",)


def _layer_shapes(c: DecoderConfig) -> dict[str, tuple[int, ...]]:
  """Flax per-layer path -> shape (without the layers axis)."""
  d, f, q, kv = c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
  shapes = {
      "input_layernorm/scale": (d,), "post_attention_layernorm/scale": (d,),
      "attn/q_proj/kernel": (d, q), "attn/k_proj/kernel": (d, kv), "attn/v_proj/kernel": (d, kv),
      "attn/o_proj/kernel": (q, d),
      "mlp/gate_proj/kernel": (d, f), "mlp/up_proj/kernel": (d, f), "mlp/down_proj/kernel": (f, d),
  }
  if c.attention_bias:
    shapes.update({"attn/q_proj/bias": (q,), "attn/k_proj/bias": (kv,), "attn/v_proj/bias": (kv,)})
  if c.attention_out_bias:
    shapes["attn/o_proj/bias"] = (d,)
  if c.mlp_bias:
    shapes.update({"mlp/gate_proj/bias": (f,), "mlp/up_proj/bias": (f,), "mlp/down_proj/bias": (d,)})
  return shapes


def hf_tensor_shapes(c: DecoderConfig) -> dict[str, tuple[int, ...]]:
  """Every tensor an HF checkpoint of this config must hold, with its PyTorch shape."""
  out = {"model.embed_tokens.weight": (c.vocab_size, c.hidden_size), "model.norm.weight": (c.hidden_size,)}
  if not c.tie_word_embeddings:
    out["lm_head.weight"] = (c.vocab_size, c.hidden_size)
  for path, shape in _layer_shapes(c).items():
    hf, is_kernel = _LAYER_MAP[path]
    for i in range(c.num_layers):
      out[f"model.layers.{i}.{hf}"] = shape[::-1] if is_kernel else shape
  return out


def hf_layout(config: DecoderConfig) -> dict[str, tuple[tuple[str, ...], bool]]:
  """Flax param path ("layers/attn/q_proj/kernel") -> (the HF tensor names it is built from, transposed).

  A scanned layer param [L, ...] stacks L HF tensors (one per layer, in order); every other
  param is one HF tensor. Transposed kernels are HF [out, in] -> Flax [in, out].
  """
  out = {"embed_tokens/embedding": (("model.embed_tokens.weight",), False),
         "final_norm/scale": (("model.norm.weight",), False)}
  if not config.tie_word_embeddings:
    out["lm_head/kernel"] = (("lm_head.weight",), True)
  for path in _layer_shapes(config):
    hf, is_kernel = _LAYER_MAP[path]
    names = tuple(f"model.layers.{i}.{hf}" for i in range(config.num_layers))
    if config.scan_layers:
      out[f"layers/{path}"] = (names, is_kernel)
    else:
      out.update({f"layers_{i}/{path}": ((name,), is_kernel) for i, name in enumerate(names)})
  return out


def params_from_hf(tensors: Mapping[str, Any], config: DecoderConfig, source: str = "<tensors>") -> dict:
  """HF-named tensors -> DecoderLM params (numpy, config.param_dtype); strict fit check first."""
  ignore = IGNORED_HF_TENSORS + (("lm_head.weight",) if config.tie_word_embeddings else ())
  check_fit(hf_tensor_shapes(config), tensors, source, ignore_extra=ignore)
  pdt = as_dtype(config.param_dtype)

  def get(name, transpose=False):
    x = np.asarray(tensors[name])
    x = x.T if transpose else x
    return np.ascontiguousarray(x.astype(pdt))

  flat = {"embed_tokens/embedding": get("model.embed_tokens.weight"), "final_norm/scale": get("model.norm.weight")}
  if not config.tie_word_embeddings:
    flat["lm_head/kernel"] = get("lm_head.weight", transpose=True)
  for path in _layer_shapes(config):
    hf, is_kernel = _LAYER_MAP[path]
    per_layer = [get(f"model.layers.{i}.{hf}", is_kernel) for i in range(config.num_layers)]
    if config.scan_layers:
      flat[f"layers/{path}"] = np.stack(per_layer)
    else:
      for i, x in enumerate(per_layer):
        flat[f"layers_{i}/{path}"] = x
  return unflatten_tree(flat)


def params_to_hf(params: Mapping[str, Any], config: DecoderConfig, dtype: Any = None) -> dict[str, np.ndarray]:
  """DecoderLM params -> HF-named numpy tensors ([out, in] weights), in `dtype` (default: as stored)."""
  flat = flatten_tree(jax.device_get(dict(params)))

  def conv(x, transpose=False):
    x = np.asarray(x)
    x = x.T if transpose else x
    return np.ascontiguousarray(x if dtype is None else x.astype(as_dtype(dtype)))

  out = {"model.embed_tokens.weight": conv(flat["embed_tokens/embedding"]),
         "model.norm.weight": conv(flat["final_norm/scale"])}
  if not config.tie_word_embeddings:
    out["lm_head.weight"] = conv(flat["lm_head/kernel"], True)
  for path in _layer_shapes(config):
    hf, is_kernel = _LAYER_MAP[path]
    for i in range(config.num_layers):
      x = flat[f"layers/{path}"][i] if config.scan_layers else flat[f"layers_{i}/{path}"]
      out[f"model.layers.{i}.{hf}"] = conv(x, is_kernel)
  return out


def save_decoder_hf(params: Mapping[str, Any], config: DecoderConfig, tokenizer: Any, out_dir: str,
                    *, dtype: Any = None, max_shard_bytes: int = 2 * 1024**3) -> str:
  """Writes an HF directory (safetensors + config.json + generation_config.json + tokenizer files).

  `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` and `load_decoder(out_dir)` read it.
  """
  tensors = params_to_hf(params, config, dtype)
  hf_config = config.to_hf()
  if dtype is not None:
    hf_config["dtype"] = str(as_dtype(dtype))
  else:
    hf_config["dtype"] = str(next(iter(tensors.values())).dtype)
  write_safetensors_dir(tensors, out_dir, hf_config, max_shard_bytes=max_shard_bytes)
  import json
  gen = {"bos_token_id": config.bos_token_id, "pad_token_id": config.pad_token_id,
         "eos_token_id": list(config.eos_token_ids) if len(config.eos_token_ids) != 1 else config.eos_token_ids[0]}
  with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
    json.dump({k: v for k, v in gen.items() if v is not None and v != []}, f, indent=2)
  if tokenizer is not None:
    save_tokenizer(tokenizer, out_dir)
  return out_dir
