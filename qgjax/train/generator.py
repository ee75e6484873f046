"""The query generator under training: load it, split trainable from frozen, bind it for losses, export.

  gen = load_generator(config)          # decoder-only LM from the registry / a local dir / a GGUF
  gen.trainable, gen.frozen             # host trees: what the optimizer updates / what stays fixed
  gen.abstract_trainable, gen.abstract_frozen   # same structure, boxed with logical axis names
  fns = gen.fns(params, frozen)               # DecoderFns of the policy (adapters on)
  ref = gen.fns(params, frozen, adapters=False)   # LoRA: the base model = the DPO reference
  gen.export(params, frozen, out_dir)     # HF safetensors dir (LoRA merged) + tokenizer

Modes (`config.train_mode`): "full" (every weight trains; `optim.freeze` can pin some),
"lora" (only the adapters of `config.lora.targets` train; the base stays frozen).
Parameters live in f32; the compute dtype follows `qgjax.parallel.compute_dtype` (bf16 on
TPU/GPU, f32 on CPU) unless `config.model.dtype` names one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qgjax.errors import ConfigError
from qgjax.parallel.backend import compute_dtype
from qgjax.train.logprobs import DecoderFns, decoder_fns


@dataclasses.dataclass
class Generator:
  module: Any
  tokenizer: Any
  trainable: Any
  frozen: Any
  abstract_trainable: Any
  abstract_frozen: Any
  mode: str
  lora: Any = None            # LoRA spec when mode == "lora"

  @property
  def config(self):
    return self.module.config

  def full_params(self, params: Any, frozen: Any) -> Any:
    """The model's complete parameter tree (LoRA adapters merged into the base weights)."""
    if self.mode == "full":
      return params
    from qgjax.models.lora import merge_lora
    return merge_lora(frozen, params, self.lora.scale)

  def fns(self, params: Any, frozen: Any, adapters: bool = True) -> DecoderFns:
    """The policy bound to its parameters; LoRA runs unmerged (x@W + s*(x@a)@b), so the
    backward pass never forms a full-size weight gradient. adapters=False: the base model."""
    if self.mode == "full":
      return decoder_fns(self.module, {"params": params})
    if not adapters:
      return decoder_fns(self.module, {"params": frozen})
    from qgjax.models.lora import apply_unmerged
    scale = self.lora.scale
    return decoder_fns(self.module, {"params": frozen},
                       apply=lambda *a, **k: apply_unmerged(self.module, frozen, params, scale, *a, **k))

  def export(self, params: Any, frozen: Any, out_dir: str) -> str:
    """HF safetensors dir of the trained generator (adapters merged). Call on every process."""
    from qgjax.models.registry import save_decoder_hf
    from qgjax.parallel.distributed import is_main_process

    full = gather_to_host(self.full_params(params, frozen))
    config = self.config.replace(dtype="float32", param_dtype="float32")
    if is_main_process():
      save_decoder_hf(full, config, self.tokenizer, out_dir)
    return out_dir


def gather_to_host(tree: Any) -> Any:
  """Global (possibly multi-host sharded) arrays -> full numpy arrays on every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def _random_params(module: Any, seed: int) -> Any:
  from flax import linen as nn

  variables = jax.jit(module.init)(jax.random.key(seed), jnp.ones((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32))
  return jax.device_get(nn.unbox(variables["params"]))


def _abstract_params(module: Any) -> Any:
  """Boxed ShapeDtypeStructs of the module's params (logical axis names, no memory)."""
  return jax.eval_shape(module.init, jax.random.key(0), jnp.ones((1, 2), jnp.int32),
                        jnp.zeros((1, 2), jnp.int32))["params"]


def _abstract_adapters(adapters: Any, abstract_params: Any) -> Any:
  """Adapter shapes boxed with the logical names of the kernels they adapt.

  a [..., in, r] takes the kernel's leading and input names, b [..., r, out] its leading and
  output names (the rank axis is never sharded), so adapters follow the base model's layout.
  """
  from flax import linen as nn

  from qgjax.models.hf_checkpoint import flatten_tree, unflatten_tree

  kernels = flatten_tree(abstract_params)
  out = {}
  for path, x in flatten_tree(adapters).items():
    module, leaf = path.rsplit("/", 1)
    box = kernels.get(f"{module}/kernel")
    names = tuple(box.names) if isinstance(box, nn.LogicallyPartitioned) else (None,) * np.ndim(x)
    names = names[:-1] + (None,) if leaf == "a" else names[:-2] + (None, names[-1])
    out[path] = nn.LogicallyPartitioned(jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), names)
  return unflatten_tree(out)


def load_generator(config: Any) -> Generator:
  """From `config.model` (name / path, dtype, random init for tests) and `config.train_mode`."""
  from qgjax.models.decoder import DecoderConfig, DecoderLM
  from qgjax.models.registry import load_decoder, load_decoder_config, load_tokenizer, resolve

  m = config.model
  dtype = compute_dtype(None, m.get("dtype", "auto"))
  overrides = dict(m.get("overrides", None) or {})
  overrides.update(scan_layers=bool(m.get("scan_layers", True)), remat=bool(m.get("remat", False)))
  if m.get("init", "pretrained") == "random":
    # A randomly initialised model of the named architecture (tests, smoke runs); the tokenizer is real.
    cfg = load_decoder_config(m.name, **overrides)
    tokenizer = load_tokenizer(resolve(m.name))
    if cfg.pad_token_id is None and tokenizer.pad_token_id is not None:
      cfg = cfg.replace(pad_token_id=int(tokenizer.pad_token_id))
    module = DecoderLM(cfg.replace(dtype=str(dtype), param_dtype="float32"))
    params = _random_params(module, int(config.get("seed", 0)))
  elif m.get("init", "pretrained") == "pretrained":
    module, params, tokenizer = load_decoder(m.name, dtype="float32", **overrides)
    module = DecoderLM(module.config.replace(dtype=str(dtype)))
  else:
    raise ConfigError(f"model.init={m.init!r}; expected 'pretrained' or 'random'")
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  abstract = _abstract_params(module)
  mode = config.get("train_mode", "full")
  if mode == "full":
    return Generator(module, tokenizer, params, {}, abstract, {}, mode)
  if mode == "lora":
    from qgjax.models.lora import LoraConfig, init_lora

    spec = LoraConfig(rank=int(config.lora.rank), alpha=float(config.lora.alpha), targets=str(config.lora.targets),
                      a_init=config.lora.get("a_init", "kaiming_uniform"))
    adapters = jax.device_get(init_lora(jax.random.key(int(config.get("seed", 0)) + 1), params, spec))
    return Generator(module, tokenizer, adapters, params, _abstract_adapters(adapters, abstract), abstract,
                     mode, spec)
  raise ConfigError(f"train_mode={mode!r}; expected 'full' or 'lora'")
