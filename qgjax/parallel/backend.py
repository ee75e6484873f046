"""Which accelerator a run uses, and the dtypes that follow from it.

  detect_backend(preferred=None) -> "tpu" | "gpu" | "cpu"   first of TPU -> GPU -> CPU that works
  compute_dtype(backend, requested=None) -> jnp.dtype        bf16 on TPU/GPU, f32 on CPU unless asked
  attention_impl(backend, dtype) -> "cudnn" | "xla"          for `jax.nn.dot_product_attention`

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
