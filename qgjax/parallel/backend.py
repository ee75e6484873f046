"""Which accelerator a run uses, and the dtypes that follow from it.

  detect_backend(preferred=None) -> "tpu" | "gpu" | "cpu"   first of TPU -> GPU -> CPU that works
  compute_dtype(backend, requested=None) -> jnp.dtype        bf16 on TPU/GPU, f32 on CPU unless asked
  attention_impl(backend, dtype) -> "cudnn" | "xla"          for `jax.nn.dot_product_attention`
  resolve_attention(setting, backend, dtype) -> "cudnn" | "xla"   a config's "auto" | "xla" | "cudnn"
  model_numerics(model_config, where) -> (dtype name, attention)   a config's model group, resolved
  cudnn_max_head_dim() -> int                                 largest head dim cuDNN's fused kernel takes here

The policy keeps parameters (and optimizer state) in f32 everywhere; only activations and
matmuls run in the compute dtype. `requested` ("float32", "bfloat16", "auto" or None) overrides it.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from qgjax.errors import ConfigError

BACKEND_ORDER = ("tpu", "gpu", "cpu")
ATTENTION_SETTINGS = ("auto", "xla", "cudnn")
_DTYPE_NAMES = {"f32": "float32", "fp32": "float32", "float32": "float32", "bf16": "bfloat16",
                "bfloat16": "bfloat16", "f16": "float16", "fp16": "float16", "float16": "float16"}


@functools.lru_cache(maxsize=None)
def _platform_works(platform: str) -> bool:
  try:
    return len(jax.devices(platform)) > 0
  except RuntimeError:
    return False


def detect_backend(preferred: str | None = None) -> str:
  """The first of TPU -> GPU -> CPU that has devices; `preferred` ("tpu"/"gpu"/"cpu"/"auto") first.

  A preferred backend that is absent falls back down the list (a config written for a TPU
  still runs on a laptop); JAX_PLATFORMS restricts what JAX itself will initialise.
  """
  preferred = (preferred or "auto").lower()
  if preferred not in ("auto",) + BACKEND_ORDER:
    raise ConfigError(f"unknown backend {preferred!r}; expected auto, tpu, gpu or cpu")
  order = BACKEND_ORDER if preferred == "auto" else (preferred,) + tuple(b for b in BACKEND_ORDER if b != preferred)
  for platform in order:
    if _platform_works(platform):
      return platform
  return jax.default_backend()


def compute_dtype(backend: str | None = None, requested: str | Any | None = None) -> jnp.dtype:
  """bf16 on TPU/GPU, f32 on CPU; `requested` (a dtype or its name; "auto"/None = policy) wins."""
  if requested is not None and not (isinstance(requested, str) and requested.lower() == "auto"):
    if isinstance(requested, str):
      name = _DTYPE_NAMES.get(requested.lower())
      if name is None:
        raise ConfigError(f"unknown dtype {requested!r}; expected float32, bfloat16, float16 or auto")
      return jnp.dtype(name)
    return jnp.dtype(requested)
  backend = backend or detect_backend()
  return jnp.dtype("bfloat16") if backend in ("tpu", "gpu") else jnp.dtype("float32")


def attention_impl(backend: str | None = None, dtype: Any = None) -> str:
  """`implementation=` for `jax.nn.dot_product_attention`: cuDNN's fused kernel on GPU for
  bf16/f16 inputs (the only dtypes it takes), XLA elsewhere."""
  backend = backend or detect_backend()
  half = dtype is None or jnp.dtype(dtype) in (jnp.dtype("bfloat16"), jnp.dtype("float16"))
  return "cudnn" if backend == "gpu" and half else "xla"


def resolve_attention(setting: str | None = "auto", backend: str | None = None, dtype: Any = None) -> str:
  """A model config's `attention_impl` ("auto" | "xla" | "cudnn"; None = "auto") -> "xla" | "cudnn".

  "auto" is `attention_impl(backend, dtype)`; an explicit value is kept (a call cuDNN cannot take
  still runs on XLA: `qgjax.models.attention_ops.fused_attention`).
  """
  name = "auto" if setting is None else str(setting).lower()
  if name not in ATTENTION_SETTINGS:
    raise ConfigError(f"unknown attention_impl {setting!r}; expected {', '.join(ATTENTION_SETTINGS)}")
  return attention_impl(backend, dtype) if name == "auto" else name


def model_numerics(model_config: Any, where: str = "config.model", backend: str | None = None) -> tuple[str, str]:
  """A config's model group (`dtype`, `attention_impl`: "auto" or a name) -> (compute dtype name,
  "xla" | "cudnn") on `backend` (default: this host's); a bad value is a ConfigError naming
  `where`.dtype / `where`.attention_impl."""
  try:
    dtype = compute_dtype(backend, model_config.dtype)
  except ConfigError as e:
    raise ConfigError(f"{where}.dtype: {e}") from None
  try:
    return str(dtype), resolve_attention(model_config.attention_impl, backend, dtype)
  except ConfigError as e:
    raise ConfigError(f"{where}.attention_impl: {e}") from None


@functools.lru_cache(maxsize=None)
def cudnn_max_head_dim() -> int:
  """The largest head dim cuDNN's fused attention takes on this host's first GPU: 256 from Hopper
  (compute capability 9.0) on, 128 on Ampere/Ada (8.x), 0 where it has none (no CUDA GPU, or an
  older one: the flash kernel needs 8.0)."""
  if not _platform_works("gpu"):
    return 0
  capability = getattr(jax.devices("gpu")[0], "compute_capability", None)
  if not capability:   # ROCm and other non-CUDA GPUs
    return 0
  major_minor = tuple(int(x) for x in str(capability).split(".")[:2])
  return 256 if major_minor >= (9, 0) else 128 if major_minor >= (8, 0) else 0
