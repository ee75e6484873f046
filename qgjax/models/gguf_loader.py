"""GGUF (llama.cpp) checkpoints -> HF config dict + HF-named f32 tensors -> DecoderLM params.

  hf_config, tensors = read_gguf(path)            # dequantized (gguf.quants.dequantize), q/k un-permuted
  config, params = load_gguf_decoder(path, dtype="float32")

llama.cpp's converter permutes the rows of the Llama q/k projections (interleaved rotary pairs
instead of HF's two halves); `unpermute_qk` undoes that so the tensors equal the HF originals.
Qwen2 GGUFs are stored unpermuted.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from qgjax.errors import CheckpointMismatchError, ConfigError

SUPPORTED_ARCHS = ("llama", "qwen2")

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight", "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of llama.cpp's `permute(w, n_head)` on the rows of a q/k weight [n_head*head_dim, ...]."""
  rows = w.shape[0]
  return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key: str, default: Any = None) -> Any:
  f = reader.fields.get(key)
  if f is None:
    return default
  value = f.contents()
  return value


def gguf_metadata(reader) -> dict[str, Any]:
  """Every scalar/string metadata field (token lists left out)."""
  out = {}
  for key in reader.fields:
    if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "scores", "token_type", "merges")):
      continue
    try:
      out[key] = reader.fields[key].contents()
    except Exception:  # noqa: BLE001  (a field type gguf cannot decode: skip it)
      pass
  return out


def hf_config_from_gguf(reader, tensor_names: set[str] | None = None) -> dict[str, Any]:
  """Builds an HF `config.json`-style dict from GGUF metadata."""
  arch = _field(reader, "general.architecture")
  if arch not in SUPPORTED_ARCHS:
    raise ConfigError(f"unsupported GGUF architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}")
  g = lambda key, default=None: _field(reader, f"{arch}.{key}", default)  # noqa: E731
  hidden, heads = int(g("embedding_length")), int(g("attention.head_count"))
  vocab = g("vocab_size")
  if vocab is None:
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = len(tokens.data) if tokens is not None else None
  names = tensor_names if tensor_names is not None else {t.name for t in reader.tensors}
  if "rope_freqs.weight" in names:
    raise ConfigError("GGUF has a rope_freqs tensor (llama3-style frequency factors): not supported; "
                      "load the HF directory of this model instead")
  cfg = {
      "model_type": arch, "vocab_size": int(vocab), "hidden_size": hidden,
      "intermediate_size": int(g("feed_forward_length")), "num_hidden_layers": int(g("block_count")),
      "num_attention_heads": heads, "num_key_value_heads": int(g("attention.head_count_kv", heads)),
      "head_dim": int(g("attention.key_length") or g("rope.dimension_count") or hidden // heads),
      "max_position_embeddings": int(g("context_length", 2048)),
      "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-6)),
      "rope_theta": float(g("rope.freq_base", 10000.0)),
      "tie_word_embeddings": "output.weight" not in names,
      "hidden_act": "silu",
      "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
      "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
      "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
  }
  scaling_type = g("rope.scaling.type")
  if scaling_type and scaling_type != "none":
    if scaling_type not in ("linear", "yarn"):
      raise ConfigError(f"unsupported GGUF rope scaling type {scaling_type!r}")
    cfg["rope_scaling"] = {"rope_type": scaling_type, "factor": float(g("rope.scaling.factor")),
                           "original_max_position_embeddings": int(g("rope.scaling.original_context_length",
                                                                     cfg["max_position_embeddings"]))}
  if arch == "llama":
    cfg["attention_bias"] = "blk.0.attn_q.bias" in names
  return cfg


def open_gguf(path: str):
  """`gguf.GGUFReader(path)`, with a cut or foreign file reported as CheckpointMismatchError.

  The reader fails on a truncated file with IndexError / "cannot reshape array" (its header or
  tensor table runs past the end), or succeeds while the last tensors' data lie past the end;
  both are reported as a truncated file with its size.
  """
  import gguf

  size = os.path.getsize(path)
  try:
    reader = gguf.GGUFReader(path)
  except (OSError, ValueError, IndexError, KeyError, OverflowError) as e:
    with open(path, "rb") as f:
      magic = f.read(4)
    if magic != b"GGUF":
      raise CheckpointMismatchError(f"{path} is not a GGUF file (magic {magic!r}): {e}") from None
    raise CheckpointMismatchError(f"{path} is truncated or corrupt ({size:,} bytes; the GGUF header or tensor "
                                  f"table runs past the end: {e})") from None
  end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
  if end > size:
    raise CheckpointMismatchError(f"{path} is truncated: {size:,} bytes, its tensors need {end:,}")
  return reader


def read_gguf(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Reads and dequantizes a GGUF file -> (HF config dict, {hf_name: f32 ndarray [out, in]})."""
  import gguf

  reader = open_gguf(path)
  names = {t.name for t in reader.tensors}
  cfg = hf_config_from_gguf(reader, names)
  tensors: dict[str, np.ndarray] = {}
  for t in reader.tensors:
    w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    # GGUF lists dims fastest-first; numpy data is already [rows=out, cols=in] like torch.
    w = w.reshape(tuple(int(d) for d in reversed(t.shape.tolist())))
    name, qk_heads = hf_tensor_name(t.name, cfg)
    tensors[name] = w if qk_heads is None else unpermute_qk(w, qk_heads)
  return cfg, tensors


def hf_tensor_name(gguf_name: str, hf_config: dict[str, Any]) -> tuple[str, int | None]:
  """GGUF tensor name -> (HF name, heads to un-permute its rows by, or None).

  Unknown tensors come back as "gguf:<name>" (the fit check reports them as unexpected); the
  heads are set for llama q/k weights and biases (`unpermute_qk`).
  """
  m = _BLOCK_RE.match(gguf_name)
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name], None
  if not (m and m.group(2) in _BLOCK_NAMES):
    return f"gguf:{gguf_name}", None
  name = f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}"
  if hf_config["model_type"] == "llama" and m.group(2) in ("attn_q.weight", "attn_q.bias"):
    return name, hf_config["num_attention_heads"]
  if hf_config["model_type"] == "llama" and m.group(2) in ("attn_k.weight", "attn_k.bias"):
    return name, hf_config["num_key_value_heads"]
  return name, None


def load_gguf_decoder(path: str, *, dtype: str = "float32", **config_overrides):
  """GGUF file -> (DecoderConfig, params) with params in `dtype` (compute dtype too)."""
  from qgjax.models.decoder import DecoderConfig
  from qgjax.models.decoder_hf import params_from_hf

  hf_cfg, tensors = read_gguf(path)
  config = DecoderConfig.from_hf(hf_cfg, **{"dtype": dtype, "param_dtype": dtype, **config_overrides})
  return config, params_from_hf(tensors, config, source=path)
