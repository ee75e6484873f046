"""A retriever family's model for the InfoNCE task: its towers, what trains, how it exports.

  Towers(module, shared, chunk=0) query / document encoders over one bi-encoder module
  RetrieverModel(...)             what qgjax.train.infonce trains, for the BERT family
                                  (infonce.bert_retriever_model) or a decoder LM
                                  (qgjax.train.decoder_retriever.decoder_retriever_model)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from qgjax.errors import ConfigError


class Towers:
  """Query / document encoders over one bi-encoder module: params {"query": p} or {"query": p, "doc": p}.

  With a non-empty `frozen` tree (LoRA: the base weights) a tower's p are adapters, passed to the
  module as its "lora" collection over `frozen` (qgjax.models.decoder_encoder.DecoderEncoder).

  chunk > 0: inside a traced step, `encode` runs the rows `chunk` at a time (a `lax.map`), each
  chunk under `jax.checkpoint`, so the backward pass recomputes one chunk's activations at a time
  instead of keeping the whole batch's: the same embeddings and gradients (up to float summation
  order) in a fraction of the memory (MiniLM, 64 documents of 256 tokens: compiled temporaries 7.2
  GB at once, 1.8 GB in chunks of 16). Chunk j holds rows j, n + j, 2n + j, ... (n chunks), so a
  batch split over devices keeps every device busy in every chunk. Used when chunk divides the rows.
  With dropout each chunk folds its index into the key (other masks than unchunked).
  """

  def __init__(self, module: Any, shared: bool, dropout: bool = False, chunk: int = 0):
    self.module, self.shared, self.dropout, self.chunk = module, shared, dropout, int(chunk)

  def encode(self, params: Any, tower: str, tokens: jax.Array, mask: jax.Array, rng: jax.Array | None,
             frozen: Any = None) -> jax.Array:
    """tokens int32[R, L], mask bool[R, L] -> embeddings [R, D]."""
    rows = tokens.shape[0]
    if self.chunk <= 0 or rows <= self.chunk or rows % self.chunk:
      return self._encode(params, tower, tokens, mask, rng, frozen)
    n = rows // self.chunk
    strided = lambda x: jnp.swapaxes(x.reshape((self.chunk, n) + x.shape[1:]), 0, 1)    # [n, chunk, ...]

    def one(args):
      i, t, m = args
      return self._encode(params, tower, t, m, None if rng is None else jax.random.fold_in(rng, i), frozen)

    out = jax.lax.map(jax.checkpoint(one), (jnp.arange(n), strided(tokens), strided(mask)))   # [n, chunk, D]
    return jnp.swapaxes(out, 0, 1).reshape(rows, -1)

  def _encode(self, params: Any, tower: str, tokens: jax.Array, mask: jax.Array, rng: jax.Array | None,
              frozen: Any = None) -> jax.Array:
    p = params["query"] if self.shared or tower == "query" else params["doc"]
    variables = {"params": frozen, "lora": p} if frozen else {"params": p}
    if self.dropout and rng is not None:
      return self.module.apply(variables, tokens, mask, deterministic=False, rngs={"dropout": rng})
    return self.module.apply(variables, tokens, mask)


@dataclasses.dataclass
class RetrieverModel:
  """One encoder family's part of the retriever task: what trains, how it encodes, how it exports."""
  towers: Towers
  trainable: Any                 # {"query": p} or {"query": p, "doc": p} (LoRA: adapters)
  frozen: Any                    # {} or the LoRA base weights
  abstract_trainable: Any
  abstract_frozen: Any
  tokenizer: Any
  max_seq_length: int
  export: Callable               # (params, frozen, out_dir, max_seq_length) -> out_dir | {tower: dir}
  fingerprint: dict = dataclasses.field(default_factory=dict)
  query_prefix: str = ""         # instruction prepended to every query (decoder family)


CPU_ENCODE_CHUNK = 16   # rows per chunk of `Towers` on CPU (config.encode_chunk = -1)


def encode_chunk(config: Any) -> int:
  """config.encode_chunk, with -1 (auto) resolved: CPU_ENCODE_CHUNK on CPU, 0 (the whole batch) on
  accelerators, where the batch's activations fit and fewer, larger kernels run faster."""
  chunk = int(config.encode_chunk)
  if chunk < -1:
    raise ConfigError(f"config.encode_chunk must be -1 (auto), 0 (off) or a row count; got {chunk}")
  if chunk == -1:
    return CPU_ENCODE_CHUNK if jax.default_backend() == "cpu" else 0
  return chunk


def similarity_normalizes(config: Any, model_normalizes: bool) -> bool:
  """cos (MultipleNegativesRankingLoss' cos_sim): the encoder L2-normalises, in training and in
  the export (a Normalize module is added when the model had none); dot: the model's own output."""
  similarity = config.similarity
  if similarity not in ("cos", "dot"):
    raise ConfigError(f"config.similarity must be 'cos' or 'dot', got {similarity!r}")
  return True if similarity == "cos" else bool(model_normalizes)


def check_towers(config: Any) -> bool:
  """config.towers -> shared?"""
  if config.towers not in ("shared", "separate"):
    raise ConfigError(f"config.towers must be 'shared' or 'separate', got {config.towers!r}")
  return config.towers == "shared"
