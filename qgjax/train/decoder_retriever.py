"""The decoder family of the retriever task: a bi-encoder over a decoder-only LM, trained by the
same InfoNCE step as the BERT retriever (qgjax.train.infonce).

  qgjax train --config configs/retriever.py:tiny,family=decoder --config.model.name=<decoder>

config.model: name (registry name, GGUF or HF dir), pooling (lasttoken | mean; "" = lasttoken), query_prefix
(an instruction prepended to every query), dtype, remat, scan_layers; config.train_mode:
full | lora (config.lora: rank, alpha, targets; the base stays frozen, adapters run unmerged).
The export (qgjax.models.decoder_encoder.save_decoder_encoder_st) is a sentence-transformers
directory with the adapters merged and the query prefix as its "query" prompt.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from qgjax.errors import ConfigError
from qgjax.train.retriever_model import RetrieverModel, Towers, check_towers, encode_chunking, similarity_normalizes


def decoder_retriever_model(config: Any) -> RetrieverModel:
  """config -> the towers, trees and export of a decoder bi-encoder (see the module docstring)."""
  from qgjax.models.decoder_encoder import DecoderEncoder, prepare_tokenizer
  from qgjax.train.generator import load_generator

  m = config.model
  if m.dropout:
    raise ConfigError("model.dropout: the decoder family has no dropout layers")
  gen = load_generator(config)
  tokenizer = prepare_tokenizer(gen.tokenizer)
  module = DecoderEncoder(gen.config, pooling=m.pooling or "lasttoken", normalize=similarity_normalizes(config, False),
                          lora_scale=gen.lora.scale if gen.mode == "lora" else 0.0)
  towers = Towers(module, shared=check_towers(config), **encode_chunking(config))
  copy = lambda tree: jax.tree.map(np.copy, tree)
  trainable = {"query": gen.trainable} if towers.shared else {"query": gen.trainable, "doc": copy(gen.trainable)}
  abstract = ({"query": gen.abstract_trainable} if towers.shared
              else {"query": gen.abstract_trainable, "doc": gen.abstract_trainable})
  prefix = str(m.query_prefix)

  def export(params, frozen, out_dir, max_seq_length):
    return export_decoder_towers(params, frozen, gen, module, tokenizer, out_dir, max_seq_length=max_seq_length,
                                 query_prefix=prefix)

  fingerprint = {"family": "decoder", "pooling": module.pooling, "query_prefix": prefix, "train_mode": gen.mode}
  return RetrieverModel(towers, trainable, gen.frozen, abstract, gen.abstract_frozen, tokenizer,
                        int(gen.config.max_position_embeddings), export, fingerprint, prefix)


def export_decoder_towers(params: Any, frozen: Any, gen: Any, module: Any, tokenizer: Any, out_dir: str, *,
                          max_seq_length: int, query_prefix: str = "") -> str | dict[str, str]:
  """sentence-transformers dir(s), adapters merged: shared -> out_dir; separate -> out_dir/{query,doc}.
  Call on every process (parameters are gathered); process 0 writes."""
  import os

  from qgjax.models.decoder_encoder import save_decoder_encoder_st
  from qgjax.parallel.distributed import is_main_process
  from qgjax.train.generator import gather_to_host

  from flax import linen as nn

  host, base = nn.unbox(gather_to_host(params)), nn.unbox(gather_to_host(frozen))
  towers = {"": host["query"]} if set(host) == {"query"} else {"query": host["query"], "doc": host["doc"]}
  out = {}
  for name, p in towers.items():
    path = os.path.join(out_dir, name) if name else out_dir
    if is_main_process():
      save_decoder_encoder_st(jax.device_get(gen.full_params(p, base)), module, tokenizer, path,
                              max_seq_length=max_seq_length, prompts={"query": query_prefix} if name != "doc" else {})
    out[name] = path
  return out[""] if "" in out else out
