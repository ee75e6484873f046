"""Batched sampling on a device mesh: padded batches in, numpy samples out, few compilations.

  sampler = Sampler.for_decoder(model, params, sampling, batch_size=16, seed=0)
  out = sampler.run(token_lists, ids, length=128)   # prompts of one length bucket
  out.tokens[i, j], out.logprobs[i, j], out.lengths[i, j], out.scores[i, j]   # prompt i, sample j
  sampler.num_compiles                               # programs traced so far
  sampler.compile_s                                  # seconds those first calls spent tracing and compiling
  sampler.run_s                                      # seconds in run() in all (compiling, sampling, copying out)

A prompt prefix common to every prompt (a few-shot prompt's instruction and examples: most of
its tokens) is prefilled once per batch instead of once per prompt when given:

  sampler = Sampler.for_decoder(model, params, sampling, batch_size=16, prefix_tokens=builder.common_prefix())
  sampler.prefixed_prompts                           # prompts that started with it (the rest: whole prefill)

By default the batch axis is split over the "data" axis of a mesh of this process's devices
(parameters replicated): generation needs no communication, so each process of a multi-host run
samples its own share of the documents independently. Keys come from (seed, id of the prompt), so
the samples of a prompt do not depend on the batch it lands in or the number of devices.

A mesh with "fsdp" / "tensor" axes larger than 1 (or explicit `rules`) shards the model too:

  mesh = make_mesh([("data", 2), ("tensor", 4)])
  sampler = Sampler.for_decoder(model, params, sampling, batch_size=16, mesh=mesh)

Parameters are placed by their logical axes (qgjax.parallel.sharding rules; `rules` default
`rules_for(mesh)`), rows go over the "batch" rule's mesh axes (data and fsdp), and the program is
traced under those rules, so activations and the KV caches (rows over "batch", kv heads over
"tensor") carry sharding constraints and GSPMD splits the matmuls. Same samples as one device.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from qgjax.errors import ConfigError
from qgjax.sampling.batching import pad_prompts
from qgjax.sampling.keys import id_hashes, prompt_keys
from qgjax.sampling.logits import SamplingParams
from qgjax.sampling.loop import Samples

GenerateFn = Callable[[Any, jax.Array, jax.Array, jax.Array], Samples]


def local_data_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D ("data",) mesh over this process's devices (the first `num_devices` if > 0)."""
  from qgjax.parallel.mesh import make_mesh

  devices = jax.local_devices()
  if num_devices:
    if num_devices > len(devices):
      raise ConfigError(f"num_devices={num_devices} but this process has {len(devices)} devices")
    devices = devices[:num_devices]
  return make_mesh([("data", -1)], devices)


@dataclasses.dataclass
class SampleBatch:
  """Numpy results for n_prompts prompts x n samples: tokens int32[n_prompts, n, N],
  logprobs f32[n_prompts, n, N], lengths int32[n_prompts, n], scores f32[n_prompts, n]."""
  tokens: np.ndarray
  logprobs: np.ndarray
  lengths: np.ndarray
  scores: np.ndarray

  def sequence(self, i: int, j: int) -> tuple[list[int], list[float]]:
    """Generated token ids and their log-probs of sample j of prompt i (up to its length)."""
    n = int(self.lengths[i, j])
    return self.tokens[i, j, :n].tolist(), self.logprobs[i, j, :n].tolist()


class Sampler:
  """Compiles `generate(params, tokens, mask, keys) -> Samples` once per prompt length."""

  def __init__(self, generate: GenerateFn, params: Any, sampling: SamplingParams, *, batch_size: int,
               pad_id: int, pad_side: str = "left", seed: int = 0, mesh: jax.sharding.Mesh | None = None,
               rules: Sequence | None = None, param_shardings: Any = None, prefix_tokens: Sequence[int] = ()):
    """rules: logical axis rules (model-sharded mode; see the module docstring). param_shardings:
    a NamedSharding per leaf of `params` (default: replicated). prefix_tokens: a token prefix of
    the prompts, prefilled once per batch (`generate` then takes it as `prefix_tokens=`); a batch
    whose prompts do not all start with it is prefilled whole."""
    self.sampling = sampling
    self.batch_size = int(batch_size)
    self.pad_id = int(pad_id)
    self.pad_side = pad_side
    self.seed = int(seed)
    self.mesh = mesh if mesh is not None else local_data_mesh()
    self.rules = tuple(rules) if rules is not None else None
    if self.rules is None:
      rows_spec, n_dev, where = P("data"), self.mesh.shape["data"], "'data' mesh axis"
    else:
      from qgjax.parallel.sharding import batch_devices, batch_spec

      rows_spec, n_dev = batch_spec(1, self.rules), batch_devices(self.mesh, self.rules)
      where = f"mesh axes {rows_spec[0]!r} of the 'batch' rule"
    if self.batch_size % n_dev:
      raise ConfigError(f"batch_size={self.batch_size} must be a multiple of the {n_dev} devices on the {where}")
    self.row_devices = n_dev
    self._rows = NamedSharding(self.mesh, rows_spec)
    replicated = NamedSharding(self.mesh, P())
    if param_shardings is None:
      param_shardings = replicated
      self.params = jax.device_put(params, replicated)
    else:
      from qgjax.parallel.sharding import put_on_mesh

      self.params = put_on_mesh(params, param_shardings)
    self.num_compiles = 0
    self.compile_s = 0.0   # seconds in calls that traced a new program (trace, lower, compile or cache load)
    self.run_s = 0.0       # seconds in run(), compile_s included
    self._generate = generate

    def run(params, tokens, mask, hashes, seed):
      self.num_compiles += 1  # Python side effect: runs once per trace, i.e. per compiled program
      return generate(params, tokens, mask, prompt_keys(seed, hashes))

    self._jitted = jax.jit(run, in_shardings=(param_shardings, self._rows, self._rows, self._rows, replicated),
                           out_shardings=self._rows)
    self.prefix = [int(t) for t in prefix_tokens]
    self.prefixed_prompts = 0   # prompts run with the prefix prefilled once per batch

    def run_prefixed(params, tokens, mask, hashes, seed, prefix):
      self.num_compiles += 1
      return generate(params, tokens, mask, prompt_keys(seed, hashes), prefix_tokens=prefix)

    self._jitted_prefixed = jax.jit(run_prefixed, out_shardings=self._rows, in_shardings=(
        param_shardings, self._rows, self._rows, self._rows, replicated, replicated))

  @classmethod
  def for_decoder(cls, model: Any, params: Any, sampling: SamplingParams, *, shared_prompt: bool = True,
                  prefill_chunk_tokens: int | None = None, **kwargs) -> "Sampler":
    """A sampler over a qgjax DecoderLM (left-padded prompts). With shared_prompt (the fast
    path) a scanned model is converted to unrolled layers once, here.

    prefill_chunk_tokens: prefill the batch in sequential groups of about this many prompt
    tokens per device (0 = all at once). Default: 1024 on CPU, where a group's activations
    then stay in cache, and 0 on accelerators.

    A mesh with an "fsdp" or "tensor" axis larger than 1, or explicit `rules`, shards the
    parameters by their logical axes (rules default: `rules_for(mesh)`) and the batch over the
    "batch" rule's axes; otherwise parameters are replicated and rows go over "data"."""
    if kwargs.get("prefix_tokens") and not shared_prompt:
      raise ConfigError("a shared prompt prefix (prefix_tokens) needs shared_prompt=True")
    if shared_prompt:
      from qgjax.models.decoder import unrolled

      model, params = unrolled(model, params)
    if kwargs.get("mesh") is not None and kwargs.get("rules") is None and _model_axes(kwargs["mesh"]):
      from qgjax.parallel.sharding import rules_for

      kwargs["rules"] = rules_for(kwargs["mesh"])
    if kwargs.get("rules") is not None and kwargs.get("param_shardings") is None:
      kwargs["param_shardings"] = _decoder_param_shardings(model, params, kwargs["mesh"], kwargs["rules"])
    pad = kwargs.pop("pad_id", None)
    pad = model.config.pad_token_id if pad is None else pad
    if prefill_chunk_tokens is None:
      from qgjax.sampling.decoder import CPU_PREFILL_CHUNK_TOKENS

      on_cpu = jax.default_backend() == "cpu"
      prefill_chunk_tokens = CPU_PREFILL_CHUNK_TOKENS if on_cpu else 0
    if kwargs.get("mesh") is None:
      kwargs["mesh"] = local_data_mesh()
    if kwargs.get("rules") is None:
      devices = kwargs["mesh"].shape["data"]
    else:
      from qgjax.parallel.sharding import batch_devices

      devices = batch_devices(kwargs["mesh"], kwargs["rules"])
    fn = functools.partial(_decoder_generate, model, sampling, shared_prompt, int(prefill_chunk_tokens), devices)
    return cls(fn, params, sampling, pad_id=0 if pad is None else pad, pad_side="left", **kwargs)

  @classmethod
  def for_seq2seq(cls, model: Any, params: Any, sampling: SamplingParams, **kwargs) -> "Sampler":
    """A sampler over a qgjax T5Model (right-padded encoder inputs)."""
    if kwargs.get("prefix_tokens"):
      raise ConfigError("a shared prompt prefix (prefix_tokens) is for decoder-only LMs, not the T5 sampler")
    pad = kwargs.pop("pad_id", None)
    pad = model.config.pad_token_id if pad is None else pad
    fn = functools.partial(_seq2seq_generate, model, sampling)
    return cls(fn, params, sampling, pad_id=pad, pad_side="right", **kwargs)

  def run(self, token_lists: Sequence[Sequence[int]], ids: Sequence[str], length: int,
          seed: int | None = None) -> SampleBatch:
    """Samples for up to batch_size prompts padded to `length` tokens (a bucket size).

    ids name the prompts (document or query ids): with the seed (default: the sampler's) they
    choose the random keys. Changing the seed does not recompile.
    """
    if len(token_lists) != len(ids):
      raise ValueError(f"{len(token_lists)} prompts but {len(ids)} ids")
    start = time.perf_counter()
    fn, extra = self._jitted, ()
    if self._starts_with_prefix(token_lists, length):
      pp = len(self.prefix)
      token_lists, length = [list(t)[pp:] for t in token_lists], length - pp
      fn, extra = self._jitted_prefixed, (np.asarray(self.prefix, np.int32),)
      self.prefixed_prompts += len(ids)
    batch = pad_prompts(token_lists, length, self.batch_size, self.pad_id, self.pad_side)
    hashes = np.zeros((self.batch_size,), np.uint32)
    hashes[:len(ids)] = id_hashes(ids)
    # Explicit placement on this process's mesh: jit refuses sharded numpy inputs when process_count > 1.
    rows = lambda x: jax.device_put(x, self._rows)
    args = (self.params, rows(batch.tokens), rows(batch.mask), rows(hashes),
            np.uint32(self.seed if seed is None else seed)) + extra
    compiles, t = self.num_compiles, time.perf_counter()
    if self.rules is None:
      out = fn(*args)
    else:  # traced under the mesh and rules: the models' logical constraints take effect
      from qgjax.parallel.sharding import activate

      with activate(self.mesh, self.rules):
        out = fn(*args)
    if self.num_compiles != compiles:  # the call returns once the program is dispatched, before it runs
      self.compile_s += time.perf_counter() - t
    out = jax.device_get(out)
    k = len(ids)
    per = out.tokens.shape[0] // self.batch_size
    shape = lambda x: np.asarray(x).reshape((self.batch_size, per) + x.shape[1:])[:k]
    result = SampleBatch(shape(out.tokens), shape(out.logprobs), shape(out.lengths), shape(out.scores))
    self.run_s += time.perf_counter() - start
    return result


  def _starts_with_prefix(self, token_lists: Sequence[Sequence[int]], length: int) -> bool:
    """Whether this batch can run with the prefix prefilled once: every prompt starts with it and
    has a token after it."""
    pp = len(self.prefix)
    return bool(pp) and length > pp and all(len(t) > pp and list(t[:pp]) == self.prefix for t in token_lists)


def _model_axes(mesh: jax.sharding.Mesh) -> list[str]:
  """Mesh axes besides "data" that split something (size > 1): these shard the model."""
  return [name for name, size in mesh.shape.items() if name != "data" and size > 1]


def _decoder_param_shardings(model: Any, params: Any, mesh: jax.sharding.Mesh, rules: Sequence) -> Any:
  """A NamedSharding per param of the DecoderLM `model`, from its logical axes (tree of `params`)."""
  import jax.numpy as jnp

  from qgjax.parallel.sharding import tree_shardings

  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 2), jnp.int32),
                            jnp.zeros((1, 2), jnp.int32))["params"]
  shardings = tree_shardings(abstract, mesh, rules)
  if jax.tree.structure(shardings) != jax.tree.structure(params):
    raise ConfigError("the decoder params do not have the model's structure: cannot shard them by logical axes")
  return shardings


def _decoder_generate(model, sampling, shared_prompt, chunk_tokens, devices, params, tokens, mask, keys,
                      prefix_tokens=None):
  from qgjax.sampling.decoder import generate_decoder

  return generate_decoder(model, params, tokens, mask, keys, sampling, shared_prompt=shared_prompt,
                          prefill_chunk_tokens=chunk_tokens, devices=devices, prefix_tokens=prefix_tokens)


def _seq2seq_generate(model, sampling, params, tokens, mask, keys):
  from qgjax.sampling.seq2seq import generate_seq2seq

  return generate_seq2seq(model, params, tokens, mask, keys, sampling)
