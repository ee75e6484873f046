"""A bi-encoder over any decoder-only LM (Llama / Qwen2 / SmolLM): last-token or mean pooling.

  enc = DecoderEncoder(decoder_config, pooling="lasttoken", normalize=True)
  emb = enc.apply({"params": params}, tokens, mask)                  # f32[B, D]
  emb = enc.apply({"params": base, "lora": adapters}, tokens, mask)  # LoRA unmerged (enc.lora_scale)
  module, params, tokenizer, info = load_decoder_encoder("smollm2-135m-instruct", pooling="lasttoken")
  save_decoder_encoder_st(params, module, tokenizer, out_dir, max_seq_length=256, prompts={"query": "..."})

Inputs are right-padded: tokens int32[B, T], mask bool[B, T] (True on real tokens, a prefix of
each row). RoPE positions are `positions_from_mask(mask)` (0..n-1 on the real tokens, as HF's
arange). Pooling is sentence-transformers' `Pooling` over the final-norm hidden states:
"lasttoken" takes the last position where the mask is set (the last column when none is),
"mean" averages the masked positions. The LM head is never used (XLA drops its logits).

The export is a sentence-transformers directory: the decoder as an HF `*ForCausalLM`
safetensors dir (`save_decoder_hf`; sentence-transformers' `Transformer` loads its base model)
+ modules.json + 1_Pooling/config.json (`pooling_mode_lasttoken` / `pooling_mode_mean_tokens`)
[+ 2_Normalize] + sentence_bert_config.json + config_sentence_transformers.json (the query
instruction as the prompt named "query", which `SentenceTransformer.encode_query` prepends).
The tokenizer is saved right-padded with a pad token (the EOS when it has none). Texts are
encoded as plain text, never through the chat template: sentence_bert_config.json carries no
`modality_config`, so sentence-transformers 6 loads the Transformer for plain text too (built by
hand on a tokenizer with a chat template it would render messages unless pinned to "text").
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from qgjax.errors import ConfigError
from qgjax.models.decoder import SUPPORTED_MODEL_TYPES, DecoderConfig, DecoderLM, positions_from_mask

POOLING_MODES = ("lasttoken", "mean")


def last_token_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """hidden [B, T, D], mask bool[B, T] -> f32[B, D]: the hidden state at the last masked position
  (sentence-transformers' lasttoken: the last column, zeroed, for a row without any)."""
  t = mask.shape[1]
  m = mask.astype(jnp.int32)
  last = t - 1 - jnp.argmax(m[:, ::-1], axis=1)
  h = hidden.astype(jnp.float32) * m[..., None].astype(jnp.float32)
  return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """hidden [B, T, D], mask bool[B, T] -> f32[B, D]: mean over the masked positions."""
  m = mask.astype(jnp.float32)[..., None]
  return jnp.sum(hidden.astype(jnp.float32) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) over the last axis (torch.nn.functional.normalize)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@dataclasses.dataclass(frozen=True)
class DecoderEncoder:
  """Decoder LM + pooling (+ L2 normalisation); `apply` mirrors flax's `Module.apply`. Hashable."""
  config: DecoderConfig
  pooling: str = "lasttoken"
  normalize: bool = False
  lora_scale: float = 0.0     # alpha / rank when variables carry a "lora" collection

  def __post_init__(self):
    if self.pooling not in POOLING_MODES:
      raise ConfigError(f"decoder pooling {self.pooling!r} is not supported; supported: {', '.join(POOLING_MODES)}")

  @property
  def lm(self) -> DecoderLM:
    return DecoderLM(self.config)

  def apply(self, variables: Mapping[str, Any], tokens: jax.Array, mask: jax.Array,
            token_type_ids: jax.Array | None = None, deterministic: bool = True, rngs: Any = None) -> jax.Array:
    """tokens int32[B, T], mask bool[B, T] (right padding) -> f32[B, D].

    variables: {"params": decoder params} or {"params": base, "lora": adapters} (qgjax.models.lora,
    applied unmerged). token_type_ids / deterministic / rngs are accepted for the BiEncoder
    interface and unused (no dropout in these decoders).
    """
    del token_type_ids, deterministic, rngs
    mask = mask.astype(bool)
    args = (tokens, positions_from_mask(mask), mask)
    if variables.get("lora"):
      from qgjax.models.lora import apply_unmerged
      _, _, hidden = apply_unmerged(self.lm, variables["params"], variables["lora"], self.lora_scale, *args,
                                    return_hidden=True)
    else:
      _, _, hidden = self.lm.apply({"params": variables["params"]}, *args, return_hidden=True)
    emb = last_token_pool(hidden, mask) if self.pooling == "lasttoken" else mean_pool(hidden, mask)
    return l2_normalize(emb) if self.normalize else emb


# ------------------------------------------------------------------------------------------------
# Which family a model is, and reading / writing the sentence-transformers layout.


def _read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def read_st_modules(path: str) -> dict[str, Any]:
  """A directory's modules.json (if any) -> {"transformer_dir", "pooling" (None if no Pooling
  module), "normalize", "max_seq_length", "prompts", ...} (qgjax.models.st_layout)."""
  from qgjax.models.st_layout import read_st_layout
  return read_st_layout(path, POOLING_MODES, None)


def encoder_family(name_or_path: str) -> str:
  """"decoder" for a GGUF file or a (sentence-transformers) dir whose config.json is a Llama /
  Qwen2 / Mistral decoder, else "bert"."""
  from qgjax.models.registry import resolve

  path = resolve(name_or_path)
  if path.endswith(".gguf"):
    return "decoder"
  if not os.path.isdir(path):
    return "bert"
  cfg = os.path.join(read_st_modules(path)["transformer_dir"], "config.json")
  if os.path.isfile(cfg) and _read_json(cfg).get("model_type") in SUPPORTED_MODEL_TYPES:
    return "decoder"
  return "bert"


def prepare_tokenizer(tokenizer: Any) -> Any:
  """Right padding (the last real token is found from the mask) and a pad token (EOS if none)."""
  tokenizer.padding_side = "right"
  if tokenizer.pad_token is None:
    if tokenizer.eos_token is None:
      raise ConfigError("the decoder's tokenizer has neither a pad nor an EOS token to pad with")
    tokenizer.pad_token = tokenizer.eos_token
  return tokenizer


def load_decoder_encoder(name_or_path: str, dtype: str = "float32", *, pooling: str | None = None,
                         normalize: bool | None = None, **config_overrides):
  """A decoder (registry name, GGUF, HF dir) or a sentence-transformers export of one ->
  (DecoderEncoder, params, tokenizer, info).

  pooling / normalize default to the export's modules (a bare decoder: lasttoken, no
  normalisation). info: {"path", "config", "pooling", "normalize", "max_seq_length", "prompts",
  "query_prefix", "family"}.
  """
  from qgjax.models.registry import load_decoder, resolve

  path = resolve(name_or_path)
  layout = read_st_modules(path)   # a bare decoder (or GGUF file): no modules, the path itself
  lm, params, tokenizer = load_decoder(layout["transformer_dir"], dtype=dtype, **config_overrides)
  prepare_tokenizer(tokenizer)
  module = DecoderEncoder(lm.config, pooling=pooling or layout["pooling"] or "lasttoken",
                          normalize=layout["normalize"] if normalize is None else bool(normalize))
  limit = int(lm.config.max_position_embeddings)
  declared = layout["max_seq_length"]
  info = {"path": path, "config": lm.config, "pooling": module.pooling, "normalize": module.normalize,
          "max_seq_length": min(int(declared), limit) if declared else limit, "prompts": layout["prompts"],
          "query_prefix": str(layout["prompts"].get("query", "")), "family": "decoder"}
  return module, params, tokenizer, info


def save_decoder_encoder_st(params: Mapping[str, Any], module: DecoderEncoder, tokenizer: Any, out_dir: str, *,
                            max_seq_length: int | None = None, prompts: Mapping[str, str] | None = None) -> str:
  """Writes a sentence-transformers directory (`SentenceTransformer(out_dir)` loads it); params
  are full decoder params (LoRA merged). Returns out_dir."""
  from qgjax.models.registry import save_decoder_hf

  config = module.config.replace(dtype="float32", param_dtype="float32")
  if tokenizer is not None:
    prepare_tokenizer(tokenizer)
  save_decoder_hf(params, config, tokenizer, out_dir)
  from qgjax.models.st_layout import LEGACY_POOLING_KEYS, pooling_config, write_st_modules
  write_st_modules(out_dir, pooling_config(config.hidden_size, module.pooling, tuple(LEGACY_POOLING_KEYS.values())),
                   module.normalize, max_seq_length or config.max_position_embeddings)
  prompts = {k: str(v) for k, v in (prompts or {}).items() if v}
  _write_json(os.path.join(out_dir, "config_sentence_transformers.json"),
              {"prompts": prompts, "default_prompt_name": None,
               "similarity_fn_name": "cosine" if module.normalize else "dot"})
  return out_dir


def _write_json(path: str, obj: Any) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)
