"""LoRA adapters as a separate parameter tree (arXiv:2106.09685).

  cfg = LoraConfig(rank=8, alpha=16, targets="q_proj|v_proj")
  lora = init_lora(rng, params, cfg)                    # {"layers": {"attn": {"q_proj": {"a", "b"}}}}
  merged = apply_lora(params, lora, cfg.scale)          # kernel + scale * a @ b (use inside a jitted loss:
                                                        # grads w.r.t. `lora` only train the adapters)
  logits, _ = apply_unmerged(model, params, lora, cfg.scale, tokens, positions, mask)  # x@W + s*(x@a)@b
  base = unmerge_lora(merged, lora, cfg.scale)          # back to the base kernels (up to rounding)
  tx = masked_optimizer(optax.adamw(1e-4), trainable_mask(tree, r"(^|/)lora(/|$)"))  # one-tree setups

Targets are a regex searched in the '/'-joined path of every `kernel` leaf (e.g.
"layers/attn/q_proj/kernel"). Kernels are [..., in, out]: any leading axes (the scanned
"layers" axis) are batch axes, so each layer gets its own a [..., in, r] and b [..., r, out].
a is Kaiming-uniform (PEFT's default, bound 1/sqrt(in)) or normal(std 1/rank); b is zero, so
a fresh adapter reproduces the base model exactly. "Adapters off" is simply the base params.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from qgjax.errors import ConfigError
from qgjax.models.hf_checkpoint import flatten_tree, unflatten_tree
from qgjax.models.layers import LORA_COLLECTION


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """rank r, alpha (scale = alpha / r), target regex on kernel paths, init of a."""
  rank: int = 8
  alpha: float = 16.0
  targets: str = r"q_proj|v_proj"
  a_init: str = "kaiming_uniform"   # | "normal"
  dtype: str = "float32"            # adapter parameter dtype (f32 even for a bf16 base)

  @property
  def scale(self) -> float:
    return float(self.alpha) / float(self.rank)


def lora_target_paths(params: Mapping[str, Any], targets: str) -> list[str]:
  """Paths ('a/b/kernel') of the kernels whose path matches `targets`; error if none does."""
  pattern = re.compile(targets)
  flat = flatten_tree(params)
  paths = sorted(p for p, x in flat.items()
                 if p.rsplit("/", 1)[-1] == "kernel" and jnp.ndim(x) >= 2 and pattern.search(p))
  if not paths:
    kernels = sorted(p for p in flat if p.endswith("/kernel"))
    raise ConfigError(f"LoRA targets {targets!r} match no kernel; kernels are: {', '.join(kernels)}")
  return paths


def init_lora(rng: jax.Array, params: Mapping[str, Any], config: LoraConfig) -> dict:
  """A fresh adapter tree mirroring `params`: {module path: {"a": [..., in, r], "b": [..., r, out]}}."""
  if config.rank < 1:
    raise ConfigError(f"LoRA rank must be >= 1, got {config.rank}")
  flat = flatten_tree(params)
  out = {}
  dtype = jnp.dtype(config.dtype)
  for i, path in enumerate(lora_target_paths(params, config.targets)):
    shape = jnp.shape(flat[path])
    *lead, fan_in, fan_out = shape
    key = jax.random.fold_in(rng, i)
    if config.a_init == "kaiming_uniform":
      bound = 1.0 / fan_in ** 0.5
      a = jax.random.uniform(key, (*lead, fan_in, config.rank), dtype, -bound, bound)
    elif config.a_init == "normal":
      a = jax.random.normal(key, (*lead, fan_in, config.rank), dtype) / config.rank
    else:
      raise ConfigError(f"unknown LoRA a_init {config.a_init!r} (kaiming_uniform | normal)")
    module = path.rsplit("/", 1)[0]
    out[f"{module}/a"] = a
    out[f"{module}/b"] = jnp.zeros((*lead, config.rank, fan_out), dtype)
  return unflatten_tree(out)


def lora_delta(a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
  """scale * a @ b in f32, batched over leading axes: [..., in, r] x [..., r, out] -> [..., in, out]."""
  return scale * jnp.einsum("...ir,...ro->...io", a.astype(jnp.float32), b.astype(jnp.float32))


def _modules(lora: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
  flat = flatten_tree(lora)
  mods = sorted({p.rsplit("/", 1)[0] for p in flat})
  return {m: (flat[f"{m}/a"], flat[f"{m}/b"]) for m in mods}


def _combine(params: Mapping[str, Any], lora: Mapping[str, Any], scale: float, sign: float) -> dict:
  flat = dict(flatten_tree(params))
  for module, (a, b) in _modules(lora).items():
    path = f"{module}/kernel"
    if path not in flat:
      raise ConfigError(f"LoRA adapter for {module} but the params have no {path}")
    w = flat[path]
    flat[path] = (jnp.asarray(w, jnp.float32) + sign * lora_delta(a, b, scale)).astype(jnp.asarray(w).dtype)
  return unflatten_tree(flat)


def apply_lora(params: Mapping[str, Any], lora: Mapping[str, Any], scale: float) -> dict:
  """Params with every adapted kernel replaced by kernel + scale * a @ b (differentiable in `lora`)."""
  return _combine(params, lora, scale, +1.0)


merge_lora = apply_lora


def unmerge_lora(params: Mapping[str, Any], lora: Mapping[str, Any], scale: float) -> dict:
  """Inverse of `merge_lora`: kernel - scale * a @ b."""
  return _combine(params, lora, scale, -1.0)


def apply_unmerged(model: nn.Module, params: Mapping[str, Any], lora: Mapping[str, Any], scale: float,
                   *args, method: Callable | str | None = None, **kwargs):
  """`model.apply` with adapters computed on the fly: each adapted layer returns x@W + (x@a)@(s*b).

  The adapters travel as the "lora" variable collection (scanned along with the params; b
  times the scale s), and the model's own layers (qgjax.models.layers.add_lora: Linear, the
  decoder's LM head) add the low-rank path wherever the collection holds `a` and `b`.
  """
  scaled = {p: x * scale if p.rsplit("/", 1)[-1] == "b" else x for p, x in flatten_tree(lora).items()}
  return model.apply({"params": params, LORA_COLLECTION: unflatten_tree(scaled)}, *args, method=method, **kwargs)


def trainable_mask(tree: Mapping[str, Any], pattern: str) -> Any:
  """Same structure as `tree`, True where the leaf's '/'-joined path matches `pattern`."""
  regex = re.compile(pattern)
  flat = flatten_tree(tree)
  return unflatten_tree({p: bool(regex.search(p)) for p in flat})


def masked_optimizer(tx, mask: Any):
  """optax transform that updates only leaves where `mask` is True (others get zero updates)."""
  import optax

  labels = jax.tree.map(lambda m: "train" if m else "freeze", mask)
  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
