"""Sampling settings from a job's config: `config.sampling` plus the stop and pad tokens of the model.

  sampling = sampling_params(config, kind, model, tokenizer)   # kind "decoder" | "t5"
  sampling_from_config(config.sampling)                       # checks the values alone (ConfigError)
"""

from __future__ import annotations

from typing import Any

from qgjax.errors import ConfigError


def sampling_from_config(s: Any, **extra):
  """config.sampling (+ eos_token_ids / pad_token_id) -> SamplingParams; a bad value is a
  ConfigError naming config.sampling."""
  from qgjax.sampling.logits import SamplingParams

  try:
    return SamplingParams(max_new_tokens=s.max_new_tokens, num_samples=s.num_samples, temperature=s.temperature,
                          top_k=s.top_k, top_p=s.top_p, num_beams=s.num_beams, length_penalty=s.length_penalty,
                          early_stopping=s.early_stopping, **extra)
  except ValueError as e:
    raise ConfigError(f"config.sampling: {e}") from None


def sampling_params(config: Any, kind: str, model: Any, tokenizer: Any):
  """config.sampling -> SamplingParams with the stop tokens (the model's and tokenizer's EOS when
  sampling.stop_at_eos, newline tokens when stop_at_newline) and the pad token."""
  from qgjax.sampling.prompts import newline_token_ids

  s = config.sampling
  stops: set[int] = set()
  if s.stop_at_eos:
    if kind == "t5":
      stops.add(int(model.config.eos_token_id))
    else:
      stops.update(int(t) for t in model.config.eos_token_ids)
    if getattr(tokenizer, "eos_token_id", None) is not None:
      stops.add(int(tokenizer.eos_token_id))
  if s.stop_at_newline:
    stops.update(newline_token_ids(tokenizer))
  pad = model.config.pad_token_id
  if pad is None:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  return sampling_from_config(s, eos_token_ids=tuple(sorted(stops)), pad_token_id=int(pad))
