"""A retriever family's model for the InfoNCE task: its towers, what trains, how it exports.

  Towers(module, shared)          query / document encoders over one bi-encoder module
  RetrieverModel(...)             what qgjax.train.infonce trains, for the BERT family
                                  (infonce.bert_retriever_model) or a decoder LM
                                  (qgjax.train.decoder_retriever.decoder_retriever_model)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from qgjax.errors import ConfigError


class Towers:
  """Query / document encoders over one bi-encoder module: params {"query": p} or {"query": p, "doc": p}.

  With a non-empty `frozen` tree (LoRA: the base weights) a tower's p are adapters, passed to the
  module as its "lora" collection over `frozen` (qgjax.models.decoder_encoder.DecoderEncoder).
  """

  def __init__(self, module: Any, shared: bool, dropout: bool = False):
    self.module, self.shared, self.dropout = module, shared, dropout

  def encode(self, params: Any, tower: str, tokens: jax.Array, mask: jax.Array, rng: jax.Array | None,
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
