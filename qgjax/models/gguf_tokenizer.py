"""A transformers fast tokenizer from the metadata of a GGUF file, without PyTorch.

transformers' own `AutoTokenizer.from_pretrained(dir, gguf_file=...)` reads the file through a
module that imports torch, which qgjax does not install. Here the `gguf` package reads the
`tokenizer.*` keys and transformers' torch-free GGUF tokenizer mapping builds the same backend
(tokens, merges, pre-tokenizer split, special tokens, chat template); tests/test_gguf_smollm2.py
checks the result against transformers' loader token for token.
"""

from __future__ import annotations

from typing import Any

from qgjax.errors import ConfigError


def read_tokenizer_metadata(path: str) -> dict[str, Any]:
  """`general.architecture` and every `tokenizer.*` key of a GGUF file as Python values."""
  from qgjax.models.gguf_loader import open_gguf

  reader = open_gguf(path)
  meta = {key: field.contents() for key, field in reader.fields.items()
          if key.startswith("tokenizer.") or key == "general.architecture"}
  if "tokenizer.ggml.tokens" not in meta:
    raise ConfigError(f"{path}: the GGUF file carries no tokenizer (no tokenizer.ggml.tokens)")
  return meta


def tokenizer_from_gguf(path: str) -> Any:
  """-> a `PreTrainedTokenizerFast`-compatible tokenizer with the file's chat template."""
  from transformers import PreTrainedTokenizerFast
  from transformers.integrations.gguf.gguf_tokenizer_mapping import (
      _SPECIAL_TOKENS, GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer)

  meta = read_tokenizer_metadata(path)
  grouped = {group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta}
             for group, renames in GGUF_TOKENIZER_MAPPING.items()}
  tokens, config = grouped["tokenizer"], grouped["tokenizer_config"]
  if tokens.get("tokenizer_type") == "llama":  # sentencepiece vocabularies: llama.cpp adds BOS unless told not to
    config.setdefault("add_bos_token", True)
  for name, key in _SPECIAL_TOKENS.items():
    token_id = meta.get(f"tokenizer.ggml.{key}")
    config[name] = tokens["tokens"][token_id] if token_id is not None else None
  try:
    backend, extra = convert_gguf_tokenizer(meta["general.architecture"], tokens)
  except (KeyError, ValueError, NotImplementedError) as e:
    raise ConfigError(f"{path}: cannot build a tokenizer of type {tokens.get('tokenizer_type')!r}: {e}") from e
  return PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)
