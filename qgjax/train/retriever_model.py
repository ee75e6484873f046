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
  chunk_tokens > 0 (and chunk 0): the chunk is chosen per traced shape [R, L], the most rows whose
  tokens (rows x L) fit in chunk_tokens and that divide R (`rows_per_chunk`); a batch that fits runs whole.
  With dropout each chunk folds its index into the key (other masks than unchunked).
  """

  def __init__(self, module: Any, shared: bool, dropout: bool = False, chunk: int = 0, chunk_tokens: int = 0):
    self.module, self.shared, self.dropout = module, shared, dropout
    self.chunk, self.chunk_tokens = int(chunk), int(chunk_tokens)

  def encode(self, params: Any, tower: str, tokens: jax.Array, mask: jax.Array, rng: jax.Array | None,
             frozen: Any = None) -> jax.Array:
    """tokens int32[R, L], mask bool[R, L] -> embeddings [R, D]."""
    rows, length = tokens.shape
    chunk = self.chunk if self.chunk > 0 else rows_per_chunk(rows, length, self.chunk_tokens)
    if chunk <= 0 or rows <= chunk or rows % chunk:
      return self._encode(params, tower, tokens, mask, rng, frozen)
    n = rows // chunk
    strided = lambda x: jnp.swapaxes(x.reshape((chunk, n) + x.shape[1:]), 0, 1)    # [n, chunk, ...]

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


# tokens (rows x length) per chunk of `Towers` on CPU (config.encode_chunk = -1): MiniLM 16 x 256 documents
# (1.8 GB of compiled temporaries for the tower's gradient); 32 x 128 runs whole (9% faster than 2 x 16)
CPU_ENCODE_TOKENS = 4096


def rows_per_chunk(rows: int, length: int, max_tokens: int) -> int:
  """The most rows, dividing `rows`, whose rows x length tokens fit in max_tokens (at least 1); 0 (the
  whole batch) when max_tokens <= 0 or all rows x length fit."""
  if max_tokens <= 0 or rows * length <= max_tokens:
    return 0
  fit = max(1, max_tokens // max(length, 1))
  return max(d for d in range(1, min(fit, rows) + 1) if rows % d == 0)


def encode_chunking(config: Any) -> dict:
  """config.encode_chunk -> `Towers` keyword arguments: k > 0 rows per chunk, 0 the whole batch,
  -1 (auto) chunks of at most CPU_ENCODE_TOKENS tokens on CPU and the whole batch on accelerators,
  where the batch's activations fit and fewer, larger kernels run faster."""
  chunk = int(config.encode_chunk)
  if chunk < -1:
    raise ConfigError(f"config.encode_chunk must be -1 (auto), 0 (off) or a row count; got {chunk}")
  if chunk == -1:
    return {"chunk_tokens": CPU_ENCODE_TOKENS} if jax.default_backend() == "cpu" else {}
  return {"chunk": chunk}


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
