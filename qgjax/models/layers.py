"""Building blocks shared by the decoder-only LMs: linear layers with logical axes, RMSNorm, RoPE.

Every parameter carries logical axis names (`nn.with_logical_partitioning`) so one rules table
maps them onto a device mesh. Linear kernels are stored `[in, out]` (the transpose of
PyTorch's `nn.Linear.weight`); attention projections keep heads flattened into the out/in
dimension (`[embed, heads*head_dim]`), so LoRA treats every kernel as a plain matrix.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qgjax.errors import ConfigError

Dtype = Any


def as_dtype(name: str | Dtype) -> Dtype:
  """'float32' | 'bfloat16' | 'float16' | a dtype -> a jnp dtype."""
  return jnp.dtype(name) if not isinstance(name, str) else jnp.dtype({"f32": "float32", "bf16": "bfloat16"}.get(name, name))


# Variable collection of unmerged LoRA adapters (qgjax.models.lora.apply_unmerged): a module whose
# scope holds lora/a [in, r] and lora/b [r, out] (b already times the LoRA scale) adds x @ a @ b.
LORA_COLLECTION = "lora"


def add_lora(module: nn.Module, x: jax.Array, y: jax.Array) -> jax.Array:
  """y + (x @ a) @ b when `module` holds LoRA adapters a, b (in x's dtype), else y unchanged."""
  if not (module.has_variable(LORA_COLLECTION, "a") and module.has_variable(LORA_COLLECTION, "b")):
    return y
  a = module.get_variable(LORA_COLLECTION, "a").astype(x.dtype)
  b = module.get_variable(LORA_COLLECTION, "b").astype(x.dtype)
  return y + ((x @ a) @ b).astype(y.dtype)


class Linear(nn.Module):
  """y = x @ kernel (+ bias) [+ x @ a @ b with LoRA adapters]; kernel [in, out] with logical
  `axes` = (in_axis, out_axis)."""
  features_in: int
  features_out: int
  axes: tuple[str, str]
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.normal(0.02)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.axes),
                        (self.features_in, self.features_out), self.param_dtype)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.axes[1],)),
                        (self.features_out,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return add_lora(self, x, y)


class RMSNorm(nn.Module):
  """x / sqrt(mean(x^2) + eps) * scale, computed in f32 and cast back (as HF Llama does)."""
  features: int
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (self.features,), self.param_dtype)
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * xf.astype(self.dtype)


# ----------------------------------------------------------------------------------------------
# Rotary position embeddings (HF "rotate_half" layout: the two halves of head_dim pair up).

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def rope_inv_freq(head_dim: int, theta: float, scaling: Mapping[str, Any] | None) -> tuple[np.ndarray, float]:
  """Inverse frequencies f32[head_dim // 2] and the cos/sin attention factor, as HF computes them.

  `scaling` is HF's `rope_scaling`/`rope_parameters` dict (None or rope_type "default" = plain
  RoPE); supported: "linear" (positions / factor), "llama3" (Llama 3.1 frequency smoothing),
  "yarn".
  """
  dim = head_dim
  # torch: base ** (arange(0, dim, 2).float() / dim), all in f32
  exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
  inv_freq = (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)
  rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
  attention_factor = 1.0
  if rope_type == "default":
    pass
  elif rope_type == "linear":
    inv_freq = (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
  elif rope_type == "llama3":
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = (2 * math.pi / inv_freq).astype(np.float32)
    scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(factor), inv_freq).astype(np.float32)
    smooth = ((old_len / wavelen - low) / (high - low)).astype(np.float32)
    smoothed = ((1 - smooth) * scaled / np.float32(factor) + smooth * scaled).astype(np.float32)
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
  elif rope_type == "yarn":
    inv_freq, attention_factor = _yarn_inv_freq(inv_freq, dim, theta, scaling)
  else:
    raise ConfigError(f"unsupported rope scaling type {rope_type!r}; supported: default, linear, llama3, yarn")
  return inv_freq, attention_factor


def _yarn_inv_freq(inv_freq: np.ndarray, dim: int, theta: float, s: Mapping[str, Any]) -> tuple[np.ndarray, float]:
  """YaRN (arXiv:2309.00071) as in HF `_compute_yarn_parameters` (no truncation options)."""
  factor = float(s["factor"])
  orig = float(s.get("original_max_position_embeddings"))
  beta_fast, beta_slow = float(s.get("beta_fast") or 32), float(s.get("beta_slow") or 1)
  mscale, mscale_all = s.get("mscale"), s.get("mscale_all_dim")

  def get_mscale(scale, m=1.0):
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

  attention_factor = s.get("attention_factor")
  if attention_factor is None:
    attention_factor = (get_mscale(factor, mscale) / get_mscale(factor, mscale_all)
                        if mscale and mscale_all else get_mscale(factor))

  def corr_dim(rot):
    return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(theta))

  low = math.floor(corr_dim(beta_fast)) if s.get("truncate", True) else corr_dim(beta_fast)
  high = math.ceil(corr_dim(beta_slow)) if s.get("truncate", True) else corr_dim(beta_slow)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001
  ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
  extrapolation = (1 - ramp).astype(np.float32)
  inv = (inv_freq / np.float32(factor)) * (1 - extrapolation) + inv_freq * extrapolation
  return inv.astype(np.float32), float(attention_factor)


ROPE_TABLE_MAX = 32768   # longest position range served from a precomputed cos/sin table
_ROPE_TABLES: dict = {}


def rope_table(inv_freq: np.ndarray, attention_factor: float, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
  """(cos, sin) f32[max_positions, head_dim / 2] for positions 0..max_positions-1 (memoised).

  The angle is the f32 product position * inv_freq, as HF computes it; cos/sin of it in f64.
  """
  key = (inv_freq.tobytes(), float(attention_factor), int(max_positions))
  if key not in _ROPE_TABLES:
    angles = np.arange(max_positions, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    angles = angles.astype(np.float64)   # the f32 product, widened for cos/sin
    _ROPE_TABLES[key] = ((np.cos(angles) * attention_factor).astype(np.float32),
                         (np.sin(angles) * attention_factor).astype(np.float32))
  return _ROPE_TABLES[key]


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray, attention_factor: float = 1.0,
                 max_positions: int | None = None) -> tuple[jax.Array, jax.Array]:
  """positions int[B, T] -> (cos, sin) f32[B, T, head_dim] (frequencies repeated over both halves).

  On CPU, with `max_positions` (the model's context, at most ROPE_TABLE_MAX): gathered from
  `rope_table` when every position is in it, else computed, under a `lax.cond`. The conditional
  also makes XLA materialise (cos, sin) once: otherwise XLA:CPU fuses cos/sin into every
  consumer and recomputes them per head and per layer (`optimization_barrier` does not survive to
  its fusion passes), which cost about 2 s (5%) of a 64-document SmolLM2 sampling run.
  """
  def computed(pos):
    freqs = pos.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb) * attention_factor, jnp.sin(emb) * attention_factor

  if not max_positions or max_positions > ROPE_TABLE_MAX or jax.default_backend() != "cpu":
    return computed(positions)
  cos_t, sin_t = rope_table(inv_freq, attention_factor, max_positions)

  def from_table(pos):
    idx = jnp.clip(pos.astype(jnp.int32), 0, max_positions - 1)
    cos, sin = jnp.take(jnp.asarray(cos_t), idx, axis=0), jnp.take(jnp.asarray(sin_t), idx, axis=0)
    return jnp.concatenate([cos, cos], axis=-1), jnp.concatenate([sin, sin], axis=-1)

  in_table = jnp.all((positions >= 0) & (positions < max_positions))
  return jax.lax.cond(in_table, from_table, computed, positions)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x [B, T, N, head_dim], cos/sin f32[B, T, head_dim] -> x rotated (dtype of x)."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  c, s = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
  return x * c + rotated * s


def logical_constraint(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Activation sharding hint by logical names; a no-op outside a mesh + rules context."""
  return nn.with_logical_constraint(x, tuple(names))
