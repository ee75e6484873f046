"""The query generator under training: load it, split trainable from frozen, bind it for losses, export.

  gen = load_generator(config)          # decoder-only LM from the registry / a local dir / a GGUF
  gen = load_generator(config, kind="t5")   # T5 / Flan-T5 from a local HF dir
  gen.trainable, gen.frozen             # host trees: what the optimizer updates / what stays fixed
  gen.abstract_trainable, gen.abstract_frozen   # same structure, boxed with logical axis names
  fns = gen.fns(params, frozen)               # DecoderFns / EncDecFns of the policy (adapters on)
  ref = gen.fns(params, frozen, adapters=False)   # LoRA: the base model = the DPO reference
  lp = gen.completion_logprobs(params, frozen, prompt, pmask, completion, cmask)   # SeqLogprobs [B]
  c, r = gen.pair_logprobs(params, frozen, prompt, pmask, chosen, cmask_c, rejected, cmask_r)
  gen.export(params, frozen, out_dir)     # HF safetensors dir (LoRA merged) + tokenizer

Kinds: "decoder" (DecoderLM: the prompt is the left context, the completion continues it) and
"t5" (T5Model: the prompt is the encoder input, the completion the decoder target, teacher-forced
from the decoder start token). The tasks see only `completion_logprobs` / `pair_logprobs`, so
SFT, RSFT, DPO and RSFT+DPO share their batches, losses and jitted step across kinds. T5 trains
without dropout (deterministic passes), as the decoder-only path does.

Modes (`config.train_mode`): "full" (every weight trains; `optim.freeze` can pin some),
"lora" (only the adapters of `config.lora.targets` train; the base stays frozen). A decoder runs
its adapters unmerged (x@W + s*(x@a)@b); T5 merges them into its kernels inside the traced loss
(W + s*a@b, differentiable in a and b), which for T5-sized models costs one kernel-sized
temporary per adapted layer.
Parameters live in f32; the compute dtype follows `qgjax.parallel.compute_dtype` (bf16 on
TPU/GPU, f32 on CPU) unless `config.model.dtype` names one, the attention implementation
`qgjax.parallel.resolve_attention` (cuDNN on a GPU in bf16, else XLA) unless
`config.model.attention_impl` names one; log-probs are f32 whatever the compute dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qgjax.errors import ConfigError
from qgjax.parallel.backend import model_numerics
from qgjax.train.logprobs import (DecoderFns, EncDecFns, SeqLogprobs, completion_logprobs, decoder_fns,
                                  encdec_completion_logprobs, encdec_pair_logprobs, pair_logprobs, t5_fns)

KINDS = ("decoder", "t5")


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
  kind: str = "decoder"       # "decoder" (DecoderLM) | "t5" (T5Model)

  @property
  def config(self):
    return self.module.config

  def full_params(self, params: Any, frozen: Any) -> Any:
    """The model's complete parameter tree (LoRA adapters merged into the base weights)."""
    if self.mode == "full":
      return params
    from qgjax.models.lora import merge_lora
    return merge_lora(frozen, params, self.lora.scale)

  def fns(self, params: Any, frozen: Any, adapters: bool = True) -> DecoderFns | EncDecFns:
    """The policy bound to its parameters. Decoder: LoRA runs unmerged (x@W + s*(x@a)@b), so the
    backward pass never forms a full-size weight gradient; T5: adapters merged in the trace.
    adapters=False: the base model."""
    if self.kind == "t5":
      if self.mode == "full":
        return t5_fns(self.module, {"params": params})
      return t5_fns(self.module, {"params": self.full_params(params, frozen) if adapters else frozen})
    if self.mode == "full":
      return decoder_fns(self.module, {"params": params})
    if not adapters:
      return decoder_fns(self.module, {"params": frozen})
    from qgjax.models.lora import apply_unmerged
    scale = self.lora.scale
    return decoder_fns(self.module, {"params": frozen},
                       apply=lambda *a, **k: apply_unmerged(self.module, frozen, params, scale, *a, **k))

  def completion_logprobs(self, params: Any, frozen: Any, prompt: jax.Array, prompt_mask: jax.Array,
                          completion: jax.Array, completion_mask: jax.Array, *, adapters: bool = True) -> SeqLogprobs:
    """log p(completion | prompt) [B]: prompt int32[B, Tp] left-padded, completion int32[B, Tc]
    right-padded (ending in EOS); the decoder packs [prompt; completion], T5 encodes the prompt
    and teacher-forces the completion."""
    fns = self.fns(params, frozen, adapters)
    if self.kind == "t5":
      return encdec_completion_logprobs(fns, prompt, prompt_mask, completion, completion_mask)
    return completion_logprobs(fns, prompt, prompt_mask, completion, completion_mask)

  def pair_logprobs(self, params: Any, frozen: Any, prompt: jax.Array, prompt_mask: jax.Array, chosen: jax.Array,
                    chosen_mask: jax.Array, rejected: jax.Array, rejected_mask: jax.Array, *,
                    share_prompt: bool = True, adapters: bool = True,
                    prefix: jax.Array | None = None) -> tuple[SeqLogprobs, SeqLogprobs]:
    """(chosen, rejected) log-probs [B] each under one prompt. Decoder: the prompt's KV cache is
    shared by both (share_prompt=False packs each pair member whole), and `prefix` int32[Pp], the
    common start split off every prompt, runs once per batch; T5: the prompt is encoded once and
    both decode against it (share_prompt and prefix do not apply)."""
    fns = self.fns(params, frozen, adapters)
    if self.kind == "t5":
      if prefix is not None:
        raise ValueError("a common prompt prefix is for decoder-only generators")
      return encdec_pair_logprobs(fns, prompt, prompt_mask, chosen, chosen_mask, rejected, rejected_mask)
    return pair_logprobs(fns, prompt, prompt_mask, chosen, chosen_mask, rejected, rejected_mask,
                         share_prompt=share_prompt, prefix=prefix)

  def export(self, params: Any, frozen: Any, out_dir: str) -> str:
    """HF safetensors dir of the trained generator (adapters merged). Call on every process."""
    from qgjax.parallel.distributed import is_main_process

    full = gather_to_host(self.full_params(params, frozen))
    config = self.config.replace(dtype="float32", param_dtype="float32")
    if is_main_process():
      if self.kind == "t5":
        from qgjax.models.t5 import save_t5_hf
        save_t5_hf(full, config, out_dir, tokenizer=self.tokenizer)
      else:
        from qgjax.models.registry import save_decoder_hf
        save_decoder_hf(full, config, self.tokenizer, out_dir)
    return out_dir


def gather_to_host(tree: Any) -> Any:
  """Global (possibly multi-host sharded) arrays -> full numpy arrays on every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def _sample_inputs(module: Any) -> tuple:
  """Smallest inputs `module.init` accepts (DecoderLM: tokens, positions; T5Model: tokens, mask, decoder tokens)."""
  from qgjax.models.t5 import T5Model, sample_inputs

  if isinstance(module, T5Model):
    return sample_inputs()
  return jnp.ones((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32)


def _random_params(module: Any, seed: int) -> Any:
  from flax import linen as nn

  variables = jax.jit(module.init)(jax.random.key(seed), *_sample_inputs(module))
  return jax.device_get(nn.unbox(variables["params"]))


def _abstract_params(module: Any) -> Any:
  """Boxed ShapeDtypeStructs of the module's params (logical axis names, no memory)."""
  return jax.eval_shape(module.init, jax.random.key(0), *_sample_inputs(module))["params"]


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


def _load_t5(config: Any, dtype: Any, attention: str) -> tuple[Any, Any, Any]:
  """(T5Model in the compute dtype with `attention`, f32 params, tokenizer) from config.model: a
  local HF T5 dir (init=pretrained), or its architecture with random weights (init=random);
  model.remat and model.overrides (T5Config fields) apply."""
  from qgjax.models.registry import load_tokenizer, resolve
  from qgjax.models.t5 import T5Config, T5Model, load_t5

  m = config.model
  path = resolve(m.name)
  overrides = dict(m.overrides or {})
  overrides.update(remat=bool(m.remat), attention_impl=attention)
  if m.init == "random":
    cfg = T5Config.from_hf(path, **overrides)
    tokenizer = load_tokenizer(path)
    module = T5Model(cfg.replace(dtype=str(dtype), param_dtype="float32"))
    params = _random_params(module, int(config.seed))
  elif m.init == "pretrained":
    module, params, tokenizer = load_t5(path, dtype="float32", **overrides)
    if tokenizer is None:
      raise ConfigError(f"{m.name} has no tokenizer files (tokenizer.json / spiece.model)")
    module = T5Model(module.config.replace(dtype=str(dtype)))
  else:
    raise ConfigError(f"model.init={m.init!r}; expected 'pretrained' or 'random'")
  return module, params, tokenizer


def load_generator(config: Any, kind: str = "decoder") -> Generator:
  """From `config.model` (name / path, dtype, random init for tests) and `config.train_mode`;
  `kind` "decoder" | "t5" (`qgjax.models.registry.model_kind` tells them apart)."""
  from qgjax.models.decoder import DecoderLM
  from qgjax.models.registry import load_decoder, load_decoder_config, load_tokenizer, resolve

  if kind not in KINDS:
    raise ConfigError(f"model kind {kind!r}; expected one of {', '.join(KINDS)}")
  m = config.model
  dtype, attention = model_numerics(m)
  overrides = dict(m.overrides or {})
  overrides.update(scan_layers=bool(m.scan_layers), remat=bool(m.remat), attention_impl=attention)
  if kind == "t5":
    module, params, tokenizer = _load_t5(config, dtype, attention)
  elif m.init == "random":
    # A randomly initialised model of the named architecture (tests, smoke runs); the tokenizer is real.
    cfg = load_decoder_config(m.name, **overrides)
    tokenizer = load_tokenizer(resolve(m.name))
    if cfg.pad_token_id is None and tokenizer.pad_token_id is not None:
      cfg = cfg.replace(pad_token_id=int(tokenizer.pad_token_id))
    module = DecoderLM(cfg.replace(dtype=str(dtype), param_dtype="float32"))
    params = _random_params(module, int(config.seed))
  elif m.init == "pretrained":
    module, params, tokenizer = load_decoder(m.name, dtype="float32", **overrides)
    module = DecoderLM(module.config.replace(dtype=str(dtype)))
  else:
    raise ConfigError(f"model.init={m.init!r}; expected 'pretrained' or 'random'")
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  abstract = _abstract_params(module)
  mode = config.train_mode
  if mode == "full":
    return Generator(module, tokenizer, params, {}, abstract, {}, mode, kind=kind)
  if mode == "lora":
    from qgjax.models.lora import LoraConfig, init_lora

    spec = LoraConfig(rank=int(config.lora.rank), alpha=float(config.lora.alpha), targets=str(config.lora.targets),
                      a_init=config.lora.a_init)
    adapters = jax.device_get(init_lora(jax.random.key(int(config.seed) + 1), params, spec))
    return Generator(module, tokenizer, adapters, params, _abstract_adapters(adapters, abstract), abstract,
                     mode, spec, kind)
  raise ConfigError(f"train_mode={mode!r}; expected 'full' or 'lora'")
