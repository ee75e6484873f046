"""Building blocks shared by the encoder families (BERT / XLM-R) and T5.

Linear kernels are stored `[in, out]` (the transpose of PyTorch's `nn.Linear.weight`) and keep
attention heads flattened into one dimension (`[embed, heads*head_dim]`), so LoRA and the HF
name maps treat every kernel as a plain matrix. Every parameter carries logical axis names.

Also here: the table-driven conversion between HF tensor names and Flax parameter paths that
`bert.py` and `t5.py` use (`HFTensor`, `params_from_hf`, `params_to_hf`, `expected_hf_shapes`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qgjax.errors import ConfigError
from qgjax.models.attention_ops import fused_attention, head_major_attention
from qgjax.parallel.backend import resolve_attention
from qgjax.models.hf_checkpoint import check_fit, flatten_tree, unflatten_tree

Dtype = Any


def as_dtype(name: str | Dtype) -> Dtype:
  """'float32' | 'bfloat16' | 'float16' (or 'f32'/'bf16', or a dtype) -> a jnp dtype."""
  if isinstance(name, str):
    name = {"f32": "float32", "bf16": "bfloat16", "fp16": "float16", "f16": "float16"}.get(name, name)
  return jnp.dtype(name)


def _gelu_exact(x):
  # 0.5 x (1 + erf(x / sqrt 2)), torch's formula; jax.nn.gelu's erfc form costs more on XLA:CPU.
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(1.0 / np.sqrt(2.0), x.dtype)))


def _gelu_tanh(x):
  return jax.nn.gelu(x, approximate=True)


# HF `ACT2FN` names -> functions (the exact forms HF computes).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": _gelu_exact,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ConfigError(f"unsupported activation {name!r}; supported: {', '.join(sorted(ACTIVATIONS))}")
  return ACTIVATIONS[name]


class Dense(nn.Module):
  """y = x @ kernel (+ bias); kernel [in, features] with logical `axes` = (in_axis, out_axis).
  f32_output: y accumulated and returned in f32 whatever the compute dtype (an LM head)."""
  features: int
  axes: tuple[str | None, str | None]
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.normal(0.02)
  f32_output: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.axes),
                        (x.shape[-1], self.features), self.param_dtype)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype),
                preferred_element_type=jnp.float32 if self.f32_output else None)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.axes[1],)),
                        (self.features,), self.param_dtype)
      y = y + bias.astype(y.dtype)
    return y


class Embed(nn.Module):
  """Lookup table [num, features] with logical `axes`; `attend` gives x @ table.T in f32 (tied heads)."""
  num: int
  features: int
  axes: tuple[str | None, str | None] = ("vocab", "embed")
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_std: float = 0.02

  def setup(self):
    self.embedding = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(self.init_std), self.axes), (self.num, self.features), self.param_dtype)

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    return jnp.dot(x.astype(self.dtype), self.embedding.astype(self.dtype).T, preferred_element_type=jnp.float32)


class LayerNorm(nn.Module):
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis, in f32 (torch LayerNorm)."""
  eps: float = 1e-12
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (d,), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (d,), self.param_dtype)
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class RMSNorm(nn.Module):
  """T5LayerNorm: x / sqrt(mean(x^2) + eps) * scale (no mean subtraction, no bias), in f32."""
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (d,), self.param_dtype)
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
    return (scale.astype(jnp.float32) * xf).astype(self.dtype)


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
  """[B, T, N*H] -> [B, T, N, H]."""
  b, t, d = x.shape
  return x.reshape(b, t, num_heads, d // num_heads)


def merge_heads(x: jax.Array) -> jax.Array:
  """[B, T, N, H] -> [B, T, N*H]."""
  b, t, n, h = x.shape
  return x.reshape(b, t, n * h)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
              bias: jax.Array | None = None, scale: float | None = None, *,
              dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None, impl: str | None = "auto") -> jax.Array:
  """Softmax attention. q [B, T, N, H], k/v [B, S, N, H] -> [B, T, N, H].

  mask bool broadcastable to [B, N, T, S] (True = attend); bias f32 broadcastable to
  [B, N, T, S]; scale defaults to 1/sqrt(H). Logits and softmax run in f32; a fully masked row
  yields the mean of v. With `dropout_rate` > 0 and a `dropout_rng` (training) the
  probabilities are dropped out (hashed mask, `qgjax.models.dropout`).

  Off CPU without dropout: `fused_attention` with `impl` (a config's attention_impl, "auto" |
  "xla" | "cudnn", resolved for this backend and q's dtype: cuDNN's fused kernel on a GPU in
  bf16/f16 where it takes the call, XLA otherwise). On CPU, and whenever there is dropout:
  `head_major_attention` (on XLA:CPU, MiniLM's [64, 128, 12, 32] attention forward + backward:
  202 ms against 239 ms for `jax.nn.dot_product_attention`).
  """
  training = dropout_rate > 0.0 and dropout_rng is not None
  if training or jax.default_backend() == "cpu":
    return head_major_attention(q, k, v, mask, bias, scale, dropout_rate=dropout_rate if training else 0.0,
                                dropout_rng=dropout_rng)
  return fused_attention(q, k, v, mask, bias, scale, impl=resolve_attention(impl, jax.default_backend(), q.dtype))


# ----------------------------------------------------------------------------------------------
# HF tensor names <-> Flax parameter paths.

@dataclasses.dataclass(frozen=True)
class HFTensor:
  """One Flax parameter and the HF tensor(s) it comes from.

  `hf` is one name, or a list of per-layer names stacked on axis 0 (scanned layers).
  `transpose` swaps the two axes of a 2-D tensor (torch Linear [out, in] <-> kernel [in, out]).
  """
  path: str
  hf: str | tuple[str, ...]
  transpose: bool = False


def _to_flax(t: np.ndarray, transpose: bool) -> np.ndarray:
  return np.ascontiguousarray(t.T) if transpose else t


def expected_hf_shapes(table: Sequence[HFTensor], flax_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
  """HF name -> the shape the checkpoint must have, given the model's Flax parameter shapes."""
  out = {}
  for e in table:
    shape = tuple(flax_shapes[e.path])
    if isinstance(e.hf, tuple):
      inner = shape[1:][::-1] if e.transpose else shape[1:]
      out.update({name: inner for name in e.hf})
    else:
      out[e.hf] = shape[::-1] if e.transpose else shape
  return out


def abstract_param_shapes(module: nn.Module, *args, method=None, **kwargs) -> dict[str, tuple[int, ...]]:
  """Flat {path: shape} of the parameters `module.init(*args)` would create (no allocation)."""
  variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, method=method, **kwargs))
  flat = flatten_tree(nn.unbox(variables)["params"])
  return {k: tuple(v.shape) for k, v in flat.items()}


def params_from_hf(table: Sequence[HFTensor], tensors: Mapping[str, np.ndarray],
                   flax_shapes: Mapping[str, tuple[int, ...]], source: str, dtype: Dtype,
                   *, ignore_extra: tuple[str, ...] = ()) -> dict[str, Any]:
  """Checks the fit (CheckpointMismatchError listing every problem) and builds the Flax params.

  Returns the nested parameter tree (plain arrays of `dtype`), the `params` collection only.
  """
  check_fit(expected_hf_shapes(table, flax_shapes), tensors, source, ignore_extra=ignore_extra)
  np_dtype = np.dtype(as_dtype(dtype))
  flat = {}
  for e in table:
    if isinstance(e.hf, tuple):
      arr = np.stack([_to_flax(np.asarray(tensors[n]), e.transpose) for n in e.hf], axis=0)
    else:
      arr = _to_flax(np.asarray(tensors[e.hf]), e.transpose)
    flat[e.path] = jnp.asarray(arr.astype(np_dtype))
  return unflatten_tree(flat)


def params_to_hf(table: Sequence[HFTensor], params: Mapping[str, Any], dtype: Dtype | None = None) -> dict[str, np.ndarray]:
  """Flax params (boxed or plain) -> {hf_name: np.ndarray} (as stored; `dtype` casts if given)."""
  flat = flatten_tree(nn.unbox(unfreeze(params)))
  out = {}
  for e in table:
    arr = np.asarray(jax.device_get(flat[e.path]))
    if dtype is not None:
      arr = arr.astype(np.dtype(as_dtype(dtype)))
    if isinstance(e.hf, tuple):
      for i, name in enumerate(e.hf):
        out[name] = _to_flax(arr[i], e.transpose)
    else:
      out[e.hf] = _to_flax(arr, e.transpose)
  return out


def unfreeze(tree: Any) -> Any:
  """FrozenDict / Mapping -> nested plain dicts (leaves untouched)."""
  if isinstance(tree, Mapping):
    return {k: unfreeze(v) for k, v in tree.items()}
  return tree
