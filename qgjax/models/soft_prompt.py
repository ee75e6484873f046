"""Soft prompts for ReadQG: an instruction prompt and a relevance-conditioned prompt.

  params = init_soft_prompt(embed_table, tokenizer, instruction, inst_len=20, rel_len=5)
  prefix = build_prefix(params, r)                  # r f32[B] -> [B, inst_len + rel_len, D]
  embeds, mask = prepend(prefix, embeds, mask)      # then T5Model.encode(None, mask, embeds=embeds)
                                                    # or DecoderLM(tokens, positions, mask, embeds=embeds)

The instruction prompt P_inst [inst_len, D] starts as the token embeddings of `instruction`
(repeated / truncated to inst_len); the relevance prompt is r * P_true + (1 - r) * P_false with
P_true / P_false [rel_len, D] starting as the embeddings of "true" / "false" (likewise
repeated). Parameters carry the logical axes ("prompt_len", "embed"); `SoftPrompt` is the Flax
module form (its `init` gives the boxed tree and shapes for sharding rules).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qgjax.errors import ConfigError, InputError

AXES = ("prompt_len", "embed")


def text_init(embed_table: Any, token_ids: Sequence[int], length: int) -> np.ndarray:
  """Rows of `embed_table` [V, D] for `token_ids`, cycled / truncated to `length` -> [length, D]."""
  if not len(token_ids):
    raise InputError("soft prompt initialisation text has no tokens")
  if length < 1:
    raise ConfigError(f"soft prompt length must be >= 1; got {length}")
  ids = np.resize(np.asarray(token_ids, np.int64), length)  # repeats the sequence cyclically
  return np.asarray(jax.device_get(embed_table))[ids]


def _ids(tokenizer, text: str) -> list[int]:
  ids = tokenizer(text, add_special_tokens=False)["input_ids"]
  if not ids:
    raise InputError(f"the tokenizer turns {text!r} into no tokens; pick another initialisation text")
  return list(ids)


def init_soft_prompt(embed_table: Any, tokenizer, instruction: str, inst_len: int, rel_len: int, *,
                     true_text: str = "true", false_text: str = "false", dtype: Any = None) -> dict[str, jax.Array]:
  """-> {"instruction": [inst_len, D], "true": [rel_len, D], "false": [rel_len, D]} from token embeddings.

  `embed_table` is the model's input embedding matrix [V, D] (T5: params["shared"]["embedding"];
  DecoderLM: params["embed_tokens"]["embedding"]). Texts are tokenised without special tokens.
  """
  table = np.asarray(jax.device_get(embed_table))
  dtype = table.dtype if dtype is None else dtype
  return {
      "instruction": jnp.asarray(text_init(table, _ids(tokenizer, instruction), inst_len), dtype),
      "true": jnp.asarray(text_init(table, _ids(tokenizer, true_text), rel_len), dtype),
      "false": jnp.asarray(text_init(table, _ids(tokenizer, false_text), rel_len), dtype),
  }


def relevance_prompt(soft_params: Mapping[str, jax.Array], r: jax.Array) -> jax.Array:
  """r f32[B] -> r * P_true + (1 - r) * P_false, [B, rel_len, D]."""
  r = jnp.asarray(r, jnp.float32)[:, None, None]
  p_true = soft_params["true"].astype(jnp.float32)[None]
  p_false = soft_params["false"].astype(jnp.float32)[None]
  return r * p_true + (1.0 - r) * p_false


def build_prefix(soft_params: Mapping[str, jax.Array], r: jax.Array) -> jax.Array:
  """r f32[B] -> [P_inst ; r * P_true + (1 - r) * P_false] as f32[B, inst_len + rel_len, D]."""
  rel = relevance_prompt(soft_params, r)
  inst = jnp.broadcast_to(soft_params["instruction"].astype(jnp.float32)[None],
                          (rel.shape[0],) + soft_params["instruction"].shape)
  prefix = jnp.concatenate([inst, rel], axis=1)
  return nn.with_logical_constraint(prefix, ("batch", "length", "embed"))


def prepend(prefix: jax.Array, embeds: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """prefix [B, P, D], embeds [B, S, D], mask bool[B, S] -> ([B, P + S, D] in embeds' dtype, bool[B, P + S]).

  The prefix positions are always attended. (For a left-padded decoder prompt the prefix lands
  before the padding; `positions_from_mask` of the new mask keeps positions contiguous.)
  """
  b, p = prefix.shape[:2]
  out = jnp.concatenate([prefix.astype(embeds.dtype), embeds], axis=1)
  return out, jnp.concatenate([jnp.ones((b, p), bool), mask.astype(bool)], axis=1)


class SoftPrompt(nn.Module):
  """Module form: `apply({"params": soft_params}, r)` -> build_prefix(soft_params, r).

  `init` draws N(0, init_std) placeholders of the right shapes and logical axes; real runs
  replace them with `init_soft_prompt(...)` (same tree).
  """
  inst_len: int
  rel_len: int
  d_model: int
  param_dtype: Any = jnp.float32
  init_std: float = 0.02

  @nn.compact
  def __call__(self, r: jax.Array) -> jax.Array:
    init = nn.with_logical_partitioning(nn.initializers.normal(self.init_std), AXES)
    params = {
        "instruction": self.param("instruction", init, (self.inst_len, self.d_model), self.param_dtype),
        "true": self.param("true", init, (self.rel_len, self.d_model), self.param_dtype),
        "false": self.param("false", init, (self.rel_len, self.d_model), self.param_dtype),
    }
    return build_prefix(params, r)
