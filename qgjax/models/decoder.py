"""Decoder-only causal LM (Llama / Qwen2 / SmolLM): RMSNorm, RoPE, grouped-query attention, SwiGLU.

  config = DecoderConfig.from_hf(json.load(open("config.json")))
  model = DecoderLM(config)
  logits, _ = model.apply({"params": params}, tokens, positions, kv_mask)            # full forward
  cache = init_cache(config, batch, max_len)
  logits, cache = model.apply({"params": params}, tokens, positions, kv_mask, cache, 0)  # prefill
  logits, cache = model.apply({"params": params}, next_tok, pos, kv_mask, cache, t)     # decode

Shared-prompt decoding (n samples of each prompt against ONE copy of its cache; the layout is
qgjax.models.shared_prompt), on unrolled layers:
  model, params = unrolled(model, params)
  logits, cache = model.apply({"params": params}, tokens, positions, kv_mask, cache, 0, return_last_only=True)
  prompt = PromptCache.from_prefill(cache, mask)
  new = init_sample_cache(config, R, max_new)
  logits, new = model.apply({"params": params}, tok int32[R], pos int32[R], prompt, new, t,
                            method=DecoderLM.decode_shared_prompt)

Shapes: tokens/positions int32[B, T]; kv_mask bool[B, S] (S = T without a cache, S = max_len
with one); logits f32[B, T, V]. With a cache the T new tokens' keys/values are written to slots
[cache_index, cache_index + T) and attention runs over all S slots, masked by kv_mask AND
causally by slot index. Positions are RoPE positions: for left-padded prompts use
`positions_from_mask(mask)` (= cumsum(mask) - 1, clipped at 0).

Parameter tree (scan_layers=True; kernels are [in, out], the "layers" axis leads):
  embed_tokens/embedding [V, D]                      ("vocab", "embed")
  layers/input_layernorm/scale [L, D]                ("layers", "embed")
  layers/attn/{q,k,v}_proj/kernel [L, D, N*Dh]       ("layers", "embed", "heads"|"kv_heads")
  layers/attn/o_proj/kernel [L, N*Dh, D]             ("layers", "heads", "embed")
  layers/post_attention_layernorm/scale [L, D]
  layers/mlp/{gate,up}_proj/kernel [L, D, F]         ("layers", "embed", "mlp")
  layers/mlp/down_proj/kernel [L, F, D]              ("layers", "mlp", "embed")
  final_norm/scale [D];  lm_head/kernel [D, V] ("embed", "vocab") unless tied
With scan_layers=False the layers are `layers_0` ... `layers_{L-1}` without the leading axis.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from qgjax.errors import ConfigError
from qgjax.models.attention_ops import causal_blocked_attention, fused_attention, head_major_attention
from qgjax.models.layers import (Linear, RMSNorm, add_lora, apply_rope, as_dtype, logical_constraint, rope_cos_sin,
                                 rope_inv_freq)
from qgjax.models.shared_prompt import PromptCache, SampleCache, shared_prompt_attention
from qgjax.parallel.backend import resolve_attention

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
# Logical axis names of KVCache.k / .v, for sharding rules.
KV_CACHE_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Architecture + numerics of a decoder-only LM. Hashable (rope_scaling is hashed as JSON)."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  rope_scaling: dict | None = None        # HF rope dict: {"rope_type": "llama3"|"linear"|"yarn", ...}
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  attention_bias: bool = False            # bias on q/k/v (Qwen2: True)
  attention_out_bias: bool = False        # bias on o_proj (Llama with attention_bias=True)
  mlp_bias: bool = False
  max_position_embeddings: int = 2048
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int | None = None
  model_type: str = "llama"
  dtype: str = "float32"                  # compute dtype
  param_dtype: str = "float32"
  scan_layers: bool = True
  remat: bool = False                     # rematerialise each layer in the backward pass
  attention_impl: str | None = "auto"     # "auto" (cuDNN on a GPU in bf16/f16, else XLA) | "xla" | "cudnn"

  def __hash__(self):
    return hash(json.dumps(dataclasses.asdict(self), sort_keys=True, default=str))

  def replace(self, **changes) -> "DecoderConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], **overrides) -> "DecoderConfig":
    """From an HF `config.json` dict (LlamaConfig / Qwen2Config / MistralConfig without sliding window)."""
    model_type = cfg.get("model_type", "llama")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ConfigError(f"unsupported decoder model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
      raise ConfigError(f"unsupported hidden_act {act!r} for a {model_type} decoder (only silu)")
    if cfg.get("use_sliding_window") or (model_type == "mistral" and cfg.get("sliding_window")):
      raise ConfigError("sliding-window attention is not supported")
    heads = int(cfg["num_attention_heads"])
    rope = dict(cfg.get("rope_parameters") or {})
    theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
    if cfg.get("rope_scaling"):
      rope.update(cfg["rope_scaling"])
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
      raise ConfigError("partial_rotary_factor != 1 is not supported")
    scaling = None if rope_type == "default" else {**{k: v for k, v in rope.items() if k != "type"}, "rope_type": rope_type}
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
    bias = bool(cfg.get("attention_bias", False))
    kwargs = dict(
        vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]), num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads, num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
        rope_theta=theta, rope_scaling=scaling, rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=True if model_type == "qwen2" else bias,
        attention_out_bias=False if model_type == "qwen2" else bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        bos_token_id=cfg.get("bos_token_id"), eos_token_ids=eos_ids, pad_token_id=cfg.get("pad_token_id"),
        model_type=model_type)
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf(self) -> dict[str, Any]:
    """An HF `config.json` dict that transformers' AutoModelForCausalLM reads back."""
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}[self.model_type]
    rope = {"rope_type": "default", "rope_theta": self.rope_theta}
    if self.rope_scaling:
      rope.update(self.rope_scaling)
    out = {
        "architectures": [arch], "model_type": self.model_type, "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim, "hidden_act": "silu",
        "max_position_embeddings": self.max_position_embeddings, "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta, "rope_parameters": rope,
        "tie_word_embeddings": self.tie_word_embeddings, "bos_token_id": self.bos_token_id,
        "eos_token_id": (list(self.eos_token_ids) if len(self.eos_token_ids) > 1
                         else (self.eos_token_ids[0] if self.eos_token_ids else None)),
        "pad_token_id": self.pad_token_id, "dtype": self.param_dtype,
    }
    if self.model_type == "qwen2":
      out["use_sliding_window"] = False
    else:
      out["attention_bias"] = self.attention_bias
      out["mlp_bias"] = self.mlp_bias
    return out


@flax.struct.dataclass
class KVCache:
  """Per-layer keys/values: k, v [num_layers, batch, max_len, num_kv_heads, head_dim]."""
  k: jax.Array
  v: jax.Array

  @property
  def max_len(self) -> int:
    return self.k.shape[2]


def init_cache(config: DecoderConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
  """A zero KV cache for `batch` sequences of up to `max_len` tokens (dtype defaults to config.dtype)."""
  shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
  dt = as_dtype(dtype or config.dtype)
  return KVCache(k=jnp.zeros(shape, dt), v=jnp.zeros(shape, dt))


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """bool/int[B, T] valid-token mask -> int32[B, T] RoPE positions (cumsum - 1, clipped at 0)."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


class Embedding(nn.Module):
  """Token embedding [V, D]; `attend` gives f32 logits against it (tied LM head)."""
  vocab_size: int
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.embedding = self.param("embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
                                (self.vocab_size, self.features), self.param_dtype)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, h: jax.Array) -> jax.Array:
    return jnp.einsum("btd,vd->btv", h, self.embedding.astype(self.dtype), preferred_element_type=jnp.float32)


class LMHead(nn.Module):
  """Untied output projection kernel [D, V] ("embed", "vocab") -> f32 logits."""
  features: int
  vocab_size: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", "vocab")),
                        (self.features, self.vocab_size), self.param_dtype)
    return add_lora(self, h, jnp.einsum("btd,dv->btv", h, kernel.astype(self.dtype), preferred_element_type=jnp.float32))


class Attention(nn.Module):
  """Grouped-query self-attention with RoPE (one layer), over one of two cache layouts:
  `__call__` an in-place KVCache (or none), `shared_prompt_step` the shared-prompt layout."""
  config: DecoderConfig

  def setup(self):
    c = self.config
    dt, pdt = as_dtype(c.dtype), as_dtype(c.param_dtype)
    self.q_proj = Linear(c.hidden_size, c.num_heads * c.head_dim, ("embed", "heads"), c.attention_bias, dt, pdt)
    self.k_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, ("embed", "kv_heads"), c.attention_bias, dt, pdt)
    self.v_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, ("embed", "kv_heads"), c.attention_bias, dt, pdt)
    self.o_proj = Linear(c.num_heads * c.head_dim, c.hidden_size, ("heads", "embed"), c.attention_out_bias, dt, pdt)

  def _qkv(self, x, cos, sin):
    """x [B, T, D] -> q [B, T, N, Dh], k/v [B, T, KVH, Dh] (q and k rotated)."""
    c = self.config
    b, t, _ = x.shape
    q = apply_rope(self.q_proj(x).reshape(b, t, c.num_heads, c.head_dim), cos, sin)
    k = apply_rope(self.k_proj(x).reshape(b, t, c.num_kv_heads, c.head_dim), cos, sin)
    return q, k, self.v_proj(x).reshape(b, t, c.num_kv_heads, c.head_dim)

  def __call__(self, x, cos, sin, mask, cache_k, cache_v, layer_idx, cache_index):
    c = self.config
    dt = as_dtype(c.dtype)
    b, t, _ = x.shape
    q, k, v = self._qkv(x, cos, sin)
    if cache_k is not None:
      # Write the T new entries into this layer's slots [cache_index, cache_index + T).
      kc, vc = k.astype(cache_k.dtype), v.astype(cache_v.dtype)
      zero = jnp.zeros((), jnp.int32)
      idx = (jnp.asarray(layer_idx, jnp.int32), zero, jnp.asarray(cache_index, jnp.int32), zero, zero)
      cache_k = jax.lax.dynamic_update_slice(cache_k, kc[None], idx)
      cache_v = jax.lax.dynamic_update_slice(cache_v, vc[None], idx)
      k = jax.lax.dynamic_index_in_dim(cache_k, idx[0], 0, keepdims=False).astype(dt)
      v = jax.lax.dynamic_index_in_dim(cache_v, idx[0], 0, keepdims=False).astype(dt)
    impl = resolve_attention(c.attention_impl, jax.default_backend(), dt)
    if impl == "xla" and jax.default_backend() == "cpu":
      if k.shape[1] == t:   # self-attention over the T positions themselves (no earlier cache): causal
        out = causal_blocked_attention(q, k, v, mask, c.head_dim ** -0.5)
      else:
        out = head_major_attention(q, k, v, mask, scale=c.head_dim ** -0.5)
    else:
      out = fused_attention(q, k, v, mask, scale=c.head_dim ** -0.5, impl=impl)
    out = self.o_proj(out.reshape(b, t, c.num_heads * c.head_dim))
    return out, cache_k, cache_v

  def shared_prompt_step(self, x, cos, sin, prompt_k, prompt_v, prompt_mask, new_k, new_v, t):
    """One new token per row (token t) in the shared-prompt layout (qgjax.models.shared_prompt).

    x [R, 1, D]; prompt_k/prompt_v/prompt_mask: this layer's PromptCache entries; new_k/new_v:
    this layer's SampleCache entries. -> (out [R, 1, D], new_k, new_v).
    """
    c = self.config
    rows = x.shape[0]
    q, k, v = self._qkv(x, cos, sin)
    out, new_k, new_v = shared_prompt_attention(q, k, v, prompt_k, prompt_v, prompt_mask, new_k, new_v, t)
    out = self.o_proj(out.reshape(rows, 1, c.num_heads * c.head_dim).astype(as_dtype(c.dtype)))
    return out, new_k, new_v


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""
  config: DecoderConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    dt, pdt = as_dtype(c.dtype), as_dtype(c.param_dtype)
    gate = Linear(c.hidden_size, c.intermediate_size, ("embed", "mlp"), c.mlp_bias, dt, pdt, name="gate_proj")(x)
    up = Linear(c.hidden_size, c.intermediate_size, ("embed", "mlp"), c.mlp_bias, dt, pdt, name="up_proj")(x)
    return Linear(c.intermediate_size, c.hidden_size, ("mlp", "embed"), c.mlp_bias, dt, pdt,
                  name="down_proj")(nn.silu(gate) * up)


class DecoderBlock(nn.Module):
  """Pre-norm transformer layer; carry = (x [B, T, D], cache_k | None, cache_v | None)."""
  config: DecoderConfig

  def setup(self):
    c = self.config
    dt, pdt = as_dtype(c.dtype), as_dtype(c.param_dtype)
    self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, dt, pdt)
    self.attn = Attention(c)
    self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, dt, pdt)
    self.mlp = MLP(c)

  def _mlp_residual(self, x):
    x = x + self.mlp(self.post_attention_layernorm(x))
    return logical_constraint(x, ("batch", "length", "embed"))

  def __call__(self, carry, layer_idx, cos, sin, mask, cache_index):
    x, cache_k, cache_v = carry
    a, cache_k, cache_v = self.attn(self.input_layernorm(x), cos, sin, mask, cache_k, cache_v, layer_idx, cache_index)
    return (self._mlp_residual(x + a), cache_k, cache_v), None

  def shared_prompt_step(self, x, cos, sin, prompt_k, prompt_v, prompt_mask, new_k, new_v, t):
    """`Attention.shared_prompt_step` in the layer: x [R, 1, D] -> (x, new_k, new_v)."""
    a, new_k, new_v = self.attn.shared_prompt_step(self.input_layernorm(x), cos, sin, prompt_k, prompt_v,
                                                   prompt_mask, new_k, new_v, t)
    return self._mlp_residual(x + a), new_k, new_v


def attention_mask(kv_mask: jax.Array, t: int, cache_index: jax.Array | int | None) -> jax.Array:
  """bool[B, 1, T, S]: key slot s is visible to query t iff kv_mask[b, s] and s <= slot(t).

  Without a cache slot(t) = t (S == T); with one slot(t) = cache_index + t.
  """
  s = kv_mask.shape[-1]
  q_slot = jnp.arange(t, dtype=jnp.int32) + (0 if cache_index is None else jnp.asarray(cache_index, jnp.int32))
  causal = jnp.arange(s, dtype=jnp.int32)[None, :] <= q_slot[:, None]
  return kv_mask.astype(bool)[:, None, None, :] & causal[None, None, :, :]


class DecoderLM(nn.Module):
  """Causal LM; `__call__` -> (logits f32[B, T, V], new_cache) [+ hidden [B, T, D] if return_hidden];
  `decode_shared_prompt` -> one decode step in the shared-prompt cache layout."""
  config: DecoderConfig

  def setup(self):
    c = self.config
    dt, pdt = as_dtype(c.dtype), as_dtype(c.param_dtype)
    self.embed_tokens = Embedding(c.vocab_size, c.hidden_size, dt, pdt)
    block = nn.remat(DecoderBlock, prevent_cse=not c.scan_layers) if c.remat else DecoderBlock
    if c.scan_layers:
      # "lora": optional adapter collection (qgjax.models.lora.apply_unmerged), stacked like params.
      self.layers = nn.scan(block, variable_axes={"params": 0, "lora": 0}, split_rngs={"params": True},
                            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                            length=c.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})(c)
    else:
      self.layers = [block(c, name=f"layers_{i}") for i in range(c.num_layers)]
    self.final_norm = RMSNorm(c.hidden_size, c.rms_norm_eps, dt, pdt)
    if not c.tie_word_embeddings:
      self.lm_head = LMHead(c.hidden_size, c.vocab_size, dt, pdt)
    inv_freq, factor = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling)
    self._inv_freq, self._rope_factor = inv_freq, factor

  def embed(self, tokens: jax.Array) -> jax.Array:
    """int[B, T] -> token embeddings [B, T, D] in the compute dtype."""
    return self.embed_tokens(tokens)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """Final hidden states [B, T, D] (after the final norm) -> f32 logits [B, T, V]."""
    if self.config.tie_word_embeddings:
      return self.embed_tokens.attend(hidden)
    return self.lm_head(hidden)

  def __call__(self, tokens, positions, kv_mask=None, cache: KVCache | None = None, cache_index=0,
               embeds=None, return_hidden: bool = False, return_last_only: bool = False):
    """return_last_only: the LM head runs on the last position only (logits [B, 1, V]; a prefill)."""
    c = self.config
    x = self.embed(tokens) if embeds is None else embeds.astype(as_dtype(c.dtype))
    b, t = x.shape[:2]
    x = logical_constraint(x, ("batch", "length", "embed"))
    if kv_mask is None:
      kv_mask = jnp.ones((b, t if cache is None else cache.max_len), bool)
    mask = attention_mask(kv_mask, t, None if cache is None else cache_index)
    cos, sin = rope_cos_sin(positions, self._inv_freq, self._rope_factor, c.max_position_embeddings)
    carry = (x, None if cache is None else cache.k, None if cache is None else cache.v)
    if c.scan_layers:
      carry, _ = self.layers(carry, jnp.arange(c.num_layers, dtype=jnp.int32), cos, sin, mask, cache_index)
    else:
      for i, layer in enumerate(self.layers):
        carry, _ = layer(carry, i, cos, sin, mask, cache_index)
    x, new_k, new_v = carry
    hidden = self.final_norm(x)
    logits = self.logits(hidden[:, -1:] if return_last_only else hidden)
    new_cache = None if cache is None else KVCache(k=new_k, v=new_v)
    if return_hidden:
      return logits, new_cache, hidden
    return logits, new_cache

  def decode_shared_prompt(self, tokens: jax.Array, positions: jax.Array, prompt: PromptCache, new: SampleCache,
                           t: jax.Array | int) -> tuple[jax.Array, SampleCache]:
    """Feeds one token per row, new-token index t, attending to ONE shared copy of each prompt's
    keys/values (qgjax.models.shared_prompt; rows prompt-major, R = B * n).

    tokens/positions int32[R] (positions: RoPE positions) -> (logits f32[R, V], the sample cache
    with slot t written). Needs unrolled layers (`unrolled(model, params)`): the layout keeps one
    array per layer.
    """
    c = self.config
    if c.scan_layers:
      raise ValueError("decode_shared_prompt needs an unrolled model: use unrolled(model, params)")
    x = logical_constraint(self.embed(tokens[:, None]), ("batch", "length", "embed"))
    cos, sin = rope_cos_sin(positions[:, None], self._inv_freq, self._rope_factor, c.max_position_embeddings)
    ks, vs = list(new.k), list(new.v)
    for i, layer in enumerate(self.layers):
      x, ks[i], vs[i] = layer.shared_prompt_step(x, cos, sin, prompt.k[i], prompt.v[i], prompt.mask, ks[i], vs[i], t)
    logits = self.logits(self.final_norm(x))
    return logits[:, 0], SampleCache(tuple(ks), tuple(vs))


def unrolled(model: DecoderLM, params: Any) -> tuple[DecoderLM, Any]:
  """A scanned DecoderLM and its params -> the same model with layers_0..layers_{L-1} (no copy
  of anything but the per-layer slices; identity when the model is already unrolled)."""
  c = model.config
  if not c.scan_layers:
    return model, params
  out = {k: v for k, v in params.items() if k != "layers"}
  for i in range(c.num_layers):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
  return DecoderLM(c.replace(scan_layers=False)), out
