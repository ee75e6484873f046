"""T5 / Flan-T5 encoder-decoder with a decoder KV cache and a precomputed cross-attention cache.

  config = T5Config.from_hf("dir/config.json")
  model = T5Model(config)
  logits = model.apply({"params": p}, tokens, mask, dec_tokens, dec_mask)            # teacher forcing
  enc = model.apply({"params": p}, tokens, mask, method=T5Model.encode)                # [B, S, D]
  cache = model.apply({"params": p}, enc, mask, max_len, method=T5Model.init_cache)   # cross k/v once
  logits, cache = model.apply({"params": p}, dec_tok, enc, mask, cache, t, method=T5Model.decode)

Shapes: tokens/mask [B, S] (int32 / bool), dec_tokens [B, T]; logits f32[B, T, V]. With a cache
the T new decoder tokens' keys/values go to slots [cache_index, cache_index + T) and attend to
every slot <= their position. Cache leaves are [layers, batch, ...] (batch on axis 1).
`encode(..., embeds=)` takes input embeddings [B, S, D] instead of token ids (soft prompts).

Covers T5 v1.0 (ReLU, tied head, outputs rescaled by d_model**-0.5) and v1.1 / Flan-T5
(gated-GELU, untied lm_head, no rescale); relative position buckets are bidirectional in the
encoder and causal in the decoder, owned by the first layer of each stack and shared.

Parameter tree (kernels [in, out], heads flattened):
  shared/embedding [V, D] ("vocab", "embed");  lm_head/kernel [D, V] ("embed", "vocab") if untied
  {encoder,decoder}/relpos_bias/embedding [buckets, N] ("relpos_buckets", "heads")
  {encoder,decoder}/layers_i/self_attn/{q,k,v}/kernel [D, N*Dk] ("embed", "heads"), o [N*Dk, D]
  decoder/layers_i/cross_attn/{q,k,v,o}/kernel; {...}/layers_i/mlp/{wi | wi_0, wi_1}/kernel [D, F], wo [F, D]
  {...}/layers_i/{self_attn_norm, cross_attn_norm, mlp_norm}/scale [D];  {...}/final_norm/scale [D]
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qgjax.errors import ConfigError, InputError
from qgjax.models.dropout import Dropout
from qgjax.models.encoder_layers import (Dense, Embed, HFTensor, RMSNorm, abstract_param_shapes, activation, as_dtype,
                                         attention, merge_heads, params_from_hf, params_to_hf, split_heads, unfreeze)
from qgjax.models.hf_checkpoint import read_safetensors_dir, save_tokenizer, write_safetensors_dir

# Logical axis names of T5Cache leaves, for sharding rules.
CACHE_AXES = ("layers", "batch", "length", "heads", "head_dim")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Architecture of a T5 model (field names follow HF `T5Config`)."""
  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_decoder_layers: int = 6
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"         # "relu" (v1.0) | "gated-gelu" (v1.1, Flan) | "gated-silu" | ...
  tie_word_embeddings: bool = True        # lm head = shared embedding
  scale_decoder_outputs: bool = True      # decoder output * d_model**-0.5 before the head (v1.0)
  pad_token_id: int = 0
  eos_token_id: int = 1
  decoder_start_token_id: int = 0
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "auto"            # "auto" (cuDNN on a GPU in bf16/f16, else XLA) | "xla" | "cudnn"
  remat: bool = False

  @property
  def is_gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  @property
  def act_name(self) -> str:
    act = self.feed_forward_proj.split("-")[-1]
    return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act  # as HF T5Config does

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.d_kv

  def replace(self, **changes) -> T5Config:
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf(cls, config_json: str | Mapping[str, Any], **overrides) -> T5Config:
    """HF `config.json` (path, directory or dict) -> T5Config.

    The head is untied iff `tie_word_embeddings` is false (original v1.1 / Flan configs); the
    d_model**-0.5 rescale follows `scale_decoder_outputs` when present (transformers >= 5
    writes it), else the tie flag (how v1.0 vs v1.1 configs were told apart).
    """
    if isinstance(config_json, str):
      path = os.path.join(config_json, "config.json") if os.path.isdir(config_json) else config_json
      with open(path) as f:
        c = json.load(f)
    else:
      c = dict(config_json)
    if c.get("model_type", "t5") not in ("t5", "mt5"):
      raise ConfigError(f"unsupported model_type {c.get('model_type')!r} for T5Model (supported: t5, mt5)")
    proj = c.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
      raise ConfigError(f"feed_forward_proj {proj!r} must be 'ACT' or 'gated-ACT'")
    tie = bool(c.get("tie_word_embeddings", True))
    fields = dict(
        vocab_size=c["vocab_size"], d_model=c["d_model"], d_kv=c["d_kv"], d_ff=c["d_ff"], num_layers=c["num_layers"],
        num_decoder_layers=c.get("num_decoder_layers") or c["num_layers"], num_heads=c["num_heads"],
        relative_attention_num_buckets=c.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=c.get("relative_attention_max_distance", 128),
        dropout_rate=c.get("dropout_rate", 0.1), layer_norm_epsilon=c.get("layer_norm_epsilon", 1e-6),
        feed_forward_proj=proj, tie_word_embeddings=tie,
        scale_decoder_outputs=bool(c.get("scale_decoder_outputs", tie)),
        pad_token_id=c.get("pad_token_id", 0) or 0, eos_token_id=_first(c.get("eos_token_id", 1)),
        decoder_start_token_id=c.get("decoder_start_token_id", c.get("pad_token_id", 0)) or 0)
    fields.update(overrides)
    config = cls(**fields)
    activation(config.act_name)  # validates the activation name
    return config

  def to_hf(self) -> dict[str, Any]:
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "vocab_size": self.vocab_size,
        "d_model": self.d_model, "d_kv": self.d_kv, "d_ff": self.d_ff, "num_layers": self.num_layers,
        "num_decoder_layers": self.num_decoder_layers, "num_heads": self.num_heads,
        "relative_attention_num_buckets": self.relative_attention_num_buckets,
        "relative_attention_max_distance": self.relative_attention_max_distance,
        "dropout_rate": self.dropout_rate, "layer_norm_epsilon": self.layer_norm_epsilon,
        "feed_forward_proj": self.feed_forward_proj, "tie_word_embeddings": self.tie_word_embeddings,
        "scale_decoder_outputs": self.scale_decoder_outputs, "is_encoder_decoder": True,
        "pad_token_id": self.pad_token_id, "eos_token_id": self.eos_token_id,
        "decoder_start_token_id": self.decoder_start_token_id, "initializer_factor": 1.0,
        "torch_dtype": self.param_dtype,
    }


def _first(x):
  return x[0] if isinstance(x, (list, tuple)) else x


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
  """int32 bucket of (key_pos - query_pos), as Mesh-TF / HF T5: exact below num_buckets/2 (per
  direction), log-spaced up to max_distance, then the last bucket."""
  rel = relative_position.astype(jnp.int32)
  buckets = jnp.zeros_like(rel)
  if bidirectional:
    num_buckets //= 2
    buckets = (rel > 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(rel)
  else:
    n = -jnp.minimum(rel, 0)
  max_exact = num_buckets // 2
  large = max_exact + (jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
                       / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(n < max_exact, n, large)


@flax.struct.dataclass
class T5Cache:
  """Decoder caches: self_k/self_v [L, B, max_len, N, Dk]; cross_k/cross_v [L, B, S, N, Dk]."""
  self_k: jax.Array
  self_v: jax.Array
  cross_k: jax.Array
  cross_v: jax.Array

  @property
  def max_len(self) -> int:
    return self.self_k.shape[2]


class T5Attention(nn.Module):
  """Unscaled multi-head attention (T5 folds 1/sqrt(d) into its init); q/k/v/o without bias."""
  config: T5Config

  def setup(self):
    c = self.config
    dt, pdt = as_dtype(c.dtype), as_dtype(c.param_dtype)
    self.q = Dense(c.inner_dim, ("embed", "heads"), use_bias=False, dtype=dt, param_dtype=pdt)
    self.k = Dense(c.inner_dim, ("embed", "heads"), use_bias=False, dtype=dt, param_dtype=pdt)
    self.v = Dense(c.inner_dim, ("embed", "heads"), use_bias=False, dtype=dt, param_dtype=pdt)
    self.o = Dense(c.d_model, ("heads", "embed"), use_bias=False, dtype=dt, param_dtype=pdt)

  def kv(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [B, S, D] -> k, v [B, S, N, Dk]."""
    return split_heads(self.k(x), self.config.num_heads), split_heads(self.v(x), self.config.num_heads)

  def __call__(self, x, k, v, mask, bias, deterministic: bool = True) -> jax.Array:
    """x [B, T, D]; k/v [B, S, N, Dk]; mask bool [B|1, 1, T|1, S]; bias [B|1, N, T, S] | None."""
    c = self.config
    q = split_heads(self.q(x), c.num_heads)
    training = not deterministic and c.dropout_rate > 0.0
    ctx = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, bias, scale=1.0,
                    dropout_rate=c.dropout_rate if training else 0.0,
                    dropout_rng=self.make_rng("dropout") if training else None, impl=c.attention_impl)
    return self.o(merge_heads(ctx))


class T5MLP(nn.Module):
  """wo(act(wi x)) or wo(act(wi_0 x) * wi_1 x) (gated), dropout after the activation."""
  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    c = self.config
    dt, pdt = as_dtype(c.dtype), as_dtype(c.param_dtype)
    act = activation(c.act_name)
    if c.is_gated:
      h = act(Dense(c.d_ff, ("embed", "mlp"), False, dt, pdt, name="wi_0")(x))
      h = h * Dense(c.d_ff, ("embed", "mlp"), False, dt, pdt, name="wi_1")(x)
    else:
      h = act(Dense(c.d_ff, ("embed", "mlp"), False, dt, pdt, name="wi")(x))
    h = Dropout(c.dropout_rate)(h, deterministic=deterministic)
    return Dense(c.d_model, ("mlp", "embed"), False, dt, pdt, name="wo")(h)


class T5Layer(nn.Module):
  """Pre-norm block: self-attention, [cross-attention,] feed-forward, each residual with dropout."""
  config: T5Config
  is_decoder: bool = False

  def setup(self):
    c = self.config
    dt, pdt = as_dtype(c.dtype), as_dtype(c.param_dtype)
    self.self_attn_norm = RMSNorm(c.layer_norm_epsilon, dt, pdt)
    self.self_attn = T5Attention(c)
    if self.is_decoder:
      self.cross_attn_norm = RMSNorm(c.layer_norm_epsilon, dt, pdt)
      self.cross_attn = T5Attention(c)
    self.mlp_norm = RMSNorm(c.layer_norm_epsilon, dt, pdt)
    self.mlp = T5MLP(c)
    self.dropout = Dropout(c.dropout_rate)

  def cross_kv(self, enc: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.cross_attn.kv(enc)

  def __call__(self, x, mask, bias, self_kv=None, cross=None, deterministic: bool = True):
    """x [B, T, D]. self_kv: (k_cache, v_cache, cache_index) or None; cross: (k, v, mask) or None.

    Returns (x, (k, v)) where k/v are this layer's full self-attention keys/values.
    """
    h = self.self_attn_norm(x)
    k, v = self.self_attn.kv(h)
    if self_kv is not None:
      k_cache, v_cache, index = self_kv
      start = (0, jnp.asarray(index, jnp.int32), 0, 0)
      k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), start)
      v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), start)
    x = x + self.dropout(self.self_attn(h, k, v, mask, bias, deterministic), deterministic=deterministic)
    if self.is_decoder:
      ck, cv, cmask = cross
      h = self.cross_attn_norm(x)
      x = x + self.dropout(self.cross_attn(h, ck, cv, cmask, None, deterministic), deterministic=deterministic)
    x = x + self.dropout(self.mlp(self.mlp_norm(x), deterministic), deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), (k, v)


class T5Stack(nn.Module):
  """Encoder or decoder stack: layers + shared relative position bias + final RMSNorm."""
  config: T5Config
  is_decoder: bool = False

  def setup(self):
    c = self.config
    dt, pdt = as_dtype(c.dtype), as_dtype(c.param_dtype)
    n = c.num_decoder_layers if self.is_decoder else c.num_layers
    self.relpos_bias = Embed(c.relative_attention_num_buckets, c.num_heads, ("relpos_buckets", "heads"),
                             jnp.float32, pdt, init_std=1.0)
    layer_cls = nn.remat(T5Layer, static_argnums=(6,)) if c.remat else T5Layer
    self.layers = [layer_cls(c, self.is_decoder, name=f"layers_{i}") for i in range(n)]
    self.final_norm = RMSNorm(c.layer_norm_epsilon, dt, pdt)
    self.dropout = Dropout(c.dropout_rate)

  def position_bias(self, q_pos: jax.Array, k_pos: jax.Array) -> jax.Array:
    """q_pos int[B|1, T], k_pos int[S] -> f32[B|1, N, T, S]."""
    c = self.config
    rel = k_pos[None, None, :] - q_pos[:, :, None]
    buckets = relative_position_bucket(rel, not self.is_decoder, c.relative_attention_num_buckets,
                                       c.relative_attention_max_distance)
    return jnp.transpose(self.relpos_bias(buckets).astype(jnp.float32), (0, 3, 1, 2))

  def cross_kv(self, enc: jax.Array) -> tuple[jax.Array, jax.Array]:
    """enc [B, S, D] -> cross k, v [L, B, S, N, Dk] for every decoder layer."""
    kvs = [layer.cross_kv(enc) for layer in self.layers]
    return jnp.stack([k for k, _ in kvs]), jnp.stack([v for _, v in kvs])

  def encode(self, x: jax.Array, mask: jax.Array, deterministic: bool = True) -> jax.Array:
    s = x.shape[1]
    pos = jnp.arange(s, dtype=jnp.int32)
    bias = self.position_bias(pos[None], pos)
    attn_mask = mask.astype(bool)[:, None, None, :]
    x = self.dropout(x, deterministic=deterministic)
    for layer in self.layers:
      x, _ = layer(x, attn_mask, bias, None, None, deterministic)
    return self.dropout(self.final_norm(x), deterministic=deterministic)

  def decode(self, x, q_pos, key_mask, cross_k, cross_v, enc_mask, cache: T5Cache | None, cache_index,
             deterministic: bool = True):
    """x [B, T, D]; q_pos int[B, T]; key_mask bool[B, K] (K = T, or max_len with a cache)."""
    k_len = key_mask.shape[1]
    k_pos = jnp.arange(k_len, dtype=jnp.int32)
    bias = self.position_bias(q_pos, k_pos)
    mask = ((k_pos[None, None, :] <= q_pos[:, :, None]) & key_mask[:, None, :])[:, None]
    cross_mask = enc_mask.astype(bool)[:, None, None, :]
    x = self.dropout(x, deterministic=deterministic)
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      self_kv = None if cache is None else (cache.self_k[i], cache.self_v[i], cache_index)
      x, (k, v) = layer(x, mask, bias, self_kv, (cross_k[i], cross_v[i], cross_mask), deterministic)
      new_k.append(k)
      new_v.append(v)
    x = self.dropout(self.final_norm(x), deterministic=deterministic)
    new_cache = None
    if cache is not None:
      new_cache = cache.replace(self_k=jnp.stack(new_k), self_v=jnp.stack(new_v))
    return x, new_cache


class T5Model(nn.Module):
  """T5ForConditionalGeneration: `encode`, `init_cache`, `decode`, `__call__` (teacher forcing), `embed`."""
  config: T5Config

  def setup(self):
    c = self.config
    dt, pdt = as_dtype(c.dtype), as_dtype(c.param_dtype)
    self.shared = Embed(c.vocab_size, c.d_model, ("vocab", "embed"), dt, pdt, init_std=1.0)
    self.encoder = T5Stack(c, is_decoder=False)
    self.decoder = T5Stack(c, is_decoder=True)
    if not c.tie_word_embeddings:
      self.lm_head = Dense(c.vocab_size, ("embed", "vocab"), use_bias=False, dtype=dt, param_dtype=pdt, f32_output=True)

  def embed(self, tokens: jax.Array) -> jax.Array:
    """int[B, S] -> token embeddings [B, S, D] (the shared table)."""
    return self.shared(tokens.astype(jnp.int32))

  def encode(self, tokens: jax.Array | None, mask: jax.Array, embeds: jax.Array | None = None,
             deterministic: bool = True) -> jax.Array:
    """tokens int[B, S] (or embeds [B, S, D]), mask bool[B, S] -> enc [B, S, D] (compute dtype)."""
    x = self.embed(tokens) if embeds is None else embeds.astype(as_dtype(self.config.dtype))
    return self.encoder.encode(x, mask, deterministic)

  def init_cache(self, enc: jax.Array, enc_mask: jax.Array, max_len: int) -> T5Cache:
    """Zero self-attention caches for `max_len` decoder tokens + the cross k/v of `enc`, once."""
    del enc_mask  # the mask is applied at decode time
    c = self.config
    cross_k, cross_v = self.decoder.cross_kv(enc)
    shape = (c.num_decoder_layers, enc.shape[0], max_len, c.num_heads, c.d_kv)
    zeros = jnp.zeros(shape, as_dtype(c.dtype))
    return T5Cache(self_k=zeros, self_v=zeros, cross_k=cross_k, cross_v=cross_v)

  def logits(self, h: jax.Array) -> jax.Array:
    c = self.config
    if c.scale_decoder_outputs:
      h = h * (c.d_model ** -0.5)
    out = self.shared.attend(h) if c.tie_word_embeddings else self.lm_head(h)
    return out.astype(jnp.float32)

  def decode(self, dec_tokens: jax.Array, enc: jax.Array | None, enc_mask: jax.Array, cache: T5Cache | None = None,
             cache_index: jax.Array | int = 0, dec_positions: jax.Array | None = None,
             dec_mask: jax.Array | None = None, deterministic: bool = True, return_hidden: bool = False):
    """-> (logits f32[B, T, V], new_cache | None) [+ the final-norm decoder states [B, T, D] if return_hidden].

    Without a cache: a full causal pass over dec_tokens (dec_mask bool[B, T] masks padded keys).
    With one: the T tokens sit at slots cache_index + t (or `dec_positions` int[B, T]) and see
    every written slot up to their own; cross k/v come from the cache (enc may be None). Keep
    cache_index + T <= cache.max_len: `dynamic_update_slice` clamps a write past the end.
    """
    b, t = dec_tokens.shape
    x = self.embed(dec_tokens)
    if cache is None:
      cross_k, cross_v = self.decoder.cross_kv(enc)
      key_mask = jnp.ones((b, t), bool) if dec_mask is None else dec_mask.astype(bool)
      q_pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None], (b, t))
    else:
      cross_k, cross_v = cache.cross_k, cache.cross_v
      key_mask = jnp.ones((b, cache.max_len), bool)
      q_pos = jnp.broadcast_to(jnp.asarray(cache_index, jnp.int32) + jnp.arange(t, dtype=jnp.int32)[None], (b, t))
    if dec_positions is not None:
      q_pos = dec_positions.astype(jnp.int32)
    h, new_cache = self.decoder.decode(x, q_pos, key_mask, cross_k, cross_v, enc_mask, cache, cache_index,
                                       deterministic)
    if return_hidden:
      return self.logits(h), new_cache, h
    return self.logits(h), new_cache

  def __call__(self, tokens: jax.Array, mask: jax.Array, dec_tokens: jax.Array, dec_mask: jax.Array | None = None,
               deterministic: bool = True, embeds: jax.Array | None = None) -> jax.Array:
    """Teacher forcing: encoder(tokens | embeds) + causal decoder(dec_tokens) -> logits f32[B, T, V]."""
    enc = self.encode(tokens, mask, embeds=embeds, deterministic=deterministic)
    logits, _ = self.decode(dec_tokens, enc, mask, dec_mask=dec_mask, deterministic=deterministic)
    return logits


def shift_right(labels: jax.Array, config: T5Config) -> jax.Array:
  """Decoder inputs from labels: [start, y_0, ..., y_{T-2}], -100 -> pad (HF `_shift_right`)."""
  labels = jnp.where(labels == -100, config.pad_token_id, labels)
  start = jnp.full(labels.shape[:-1] + (1,), config.decoder_start_token_id, labels.dtype)
  return jnp.concatenate([start, labels[..., :-1]], axis=-1)


def init_decoder_cache(model: T5Model, params: Mapping[str, Any], enc: jax.Array, enc_mask: jax.Array,
                       max_len: int) -> T5Cache:
  """Function form of `T5Model.init_cache`: zero self caches + cross k/v computed once from enc."""
  return model.apply({"params": params}, enc, enc_mask, max_len, method=T5Model.init_cache)


# ----------------------------------------------------------------------------------------------
# HF checkpoint layout.

def hf_table(config: T5Config) -> list[HFTensor]:
  """T5Model paths <-> `T5ForConditionalGeneration` tensor names."""
  table = [HFTensor("shared/embedding", "shared.weight")]
  if not config.tie_word_embeddings:
    table.append(HFTensor("lm_head/kernel", "lm_head.weight", True))
  mlp = ("wi_0", "wi_1", "wo") if config.is_gated else ("wi", "wo")
  for stack, n in (("encoder", config.num_layers), ("decoder", config.num_decoder_layers)):
    table.append(HFTensor(f"{stack}/relpos_bias/embedding",
                          f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"))
    table.append(HFTensor(f"{stack}/final_norm/scale", f"{stack}.final_layer_norm.weight"))
    for i in range(n):
      fp, hp = f"{stack}/layers_{i}", f"{stack}.block.{i}.layer"
      subs = [("self_attn", "0.SelfAttention", "self_attn_norm", "0.layer_norm")]
      if stack == "decoder":
        subs.append(("cross_attn", "1.EncDecAttention", "cross_attn_norm", "1.layer_norm"))
      for attn, hf_attn, norm, hf_norm in subs:
        table.extend(HFTensor(f"{fp}/{attn}/{p}/kernel", f"{hp}.{hf_attn}.{p}.weight", True) for p in "qkvo")
        table.append(HFTensor(f"{fp}/{norm}/scale", f"{hp}.{hf_norm}.weight"))
      ff = 2 if stack == "decoder" else 1
      table.extend(HFTensor(f"{fp}/mlp/{p}/kernel", f"{hp}.{ff}.DenseReluDense.{p}.weight", True) for p in mlp)
      table.append(HFTensor(f"{fp}/mlp_norm/scale", f"{hp}.{ff}.layer_norm.weight"))
  return table


# Tied copies that some checkpoints store alongside `shared.weight`.
_TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def sample_inputs():
  return jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool), jnp.zeros((1, 2), jnp.int32)


def load_t5(path: str, dtype: str = "float32", **config_overrides):
  """An HF T5 directory (config.json + safetensors, sharded OK) -> (T5Model, params, tokenizer | None).

  A checkpoint whose `lm_head.weight` differs from `shared.weight` is loaded untied whatever the
  config's tie flag says (as transformers does). Mismatches raise CheckpointMismatchError.
  """
  if not os.path.isdir(path):
    raise InputError(f"{path} is not a model directory (expected config.json + *.safetensors)")
  tensors = read_safetensors_dir(path)
  overrides = {"dtype": str(as_dtype(dtype)), "param_dtype": str(as_dtype(dtype)), **config_overrides}
  config = T5Config.from_hf(path, **overrides)
  if (config.tie_word_embeddings and "lm_head.weight" in tensors and "shared.weight" in tensors
      and np.shape(tensors["lm_head.weight"]) == np.shape(tensors["shared.weight"])
      and not np.array_equal(np.asarray(tensors["lm_head.weight"]), np.asarray(tensors["shared.weight"]))):
    config = config.replace(tie_word_embeddings=False)
  model = T5Model(config)
  shapes = abstract_param_shapes(model, *sample_inputs())
  ignore = _TIED_COPIES + (("lm_head.weight",) if config.tie_word_embeddings else ())
  params = params_from_hf(hf_table(config), tensors, shapes, path, dtype, ignore_extra=ignore)
  return model, params, _load_tokenizer(path)


def _load_tokenizer(path: str):
  names = ("tokenizer.json", "tokenizer_config.json", "spiece.model")
  if not any(os.path.isfile(os.path.join(path, n)) for n in names):
    return None
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(path)


def save_t5_hf(params: Mapping[str, Any], config: T5Config, out_dir: str, tokenizer=None, *,
               dtype: str | None = None, max_shard_bytes: int = 2 * 1024**3) -> str:
  """Writes an HF T5 directory (`T5ForConditionalGeneration.from_pretrained` loads it).

  `dtype` casts the stored tensors (default: as they are); above `max_shard_bytes` the
  checkpoint is sharded with a `model.safetensors.index.json`.
  """
  write_safetensors_dir(params_to_hf(hf_table(config), params, dtype), out_dir, config.replace(
      param_dtype=str(as_dtype(dtype or config.param_dtype))).to_hf(), max_shard_bytes=max_shard_bytes)
  if tokenizer is not None:
    save_tokenizer(tokenizer, out_dir)
  return out_dir


def init_params(model: T5Model, seed: int = 0) -> dict[str, Any]:
  """Fresh random params (plain arrays)."""
  variables = jax.jit(model.init)(jax.random.PRNGKey(seed), *sample_inputs())
  return unfreeze(nn.unbox(variables)["params"])
