"""Static shapes for the sampler: prompt lengths rounded up to a few buckets, batches padded.

A corpus of any size then compiles one program per bucket (times the few sampling settings),
never one per batch.

  bucket_for(n, buckets)                    -> smallest bucket >= n
  pad_prompts(token_lists, length, batch)   -> PaddedPrompts (tokens int32[B, L], mask bool[B, L], valid bool[B])
  bucketed(items, buckets, batch_size)      -> yields (bucket_length, [items]) groups of <= batch_size
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np


def bucket_for(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket that holds `length` tokens; ValueError when none does."""
  for b in sorted(buckets):
    if length <= b:
      return int(b)
  raise ValueError(f"prompt of {length} tokens is longer than the largest bucket {max(buckets)}")


@dataclasses.dataclass
class PaddedPrompts:
  """tokens int32[B, L]; mask bool[B, L] (True = real token); valid bool[B] (False = filler row)."""
  tokens: np.ndarray
  mask: np.ndarray
  valid: np.ndarray


def pad_prompts(token_lists: Sequence[Sequence[int]], length: int, batch_size: int, pad_id: int,
                side: str = "left") -> PaddedPrompts:
  """Pads each prompt to `length` (left for decoder-only LMs, right for encoders) and the batch
  to `batch_size` rows. Filler rows hold one real pad token so no attention row is empty."""
  if len(token_lists) > batch_size:
    raise ValueError(f"{len(token_lists)} prompts do not fit a batch of {batch_size}")
  if side not in ("left", "right"):
    raise ValueError(f"side must be 'left' or 'right', got {side!r}")
  tokens = np.full((batch_size, length), pad_id, dtype=np.int32)
  mask = np.zeros((batch_size, length), dtype=bool)
  valid = np.zeros((batch_size,), dtype=bool)
  for i, ids in enumerate(token_lists):
    n = len(ids)
    if n == 0 or n > length:
      raise ValueError(f"prompt {i} has {n} tokens; needs 1..{length}")
    sl = slice(length - n, length) if side == "left" else slice(0, n)
    tokens[i, sl] = np.asarray(ids, dtype=np.int32)
    mask[i, sl] = True
    valid[i] = True
  filler = slice(length - 1, length) if side == "left" else slice(0, 1)
  mask[len(token_lists):, filler] = True
  return PaddedPrompts(tokens, mask, valid)


def bucketed(items: Iterable[Any], length_of: Callable[[Any], int], buckets: Sequence[int],
             batch_size: int) -> Iterator[tuple[int, list[Any]]]:
  """Groups a stream of items by length bucket; yields (bucket, items) when a group is full and
  every partial group at the end (the caller pads it with `pad_prompts`)."""
  pending: dict[int, list[Any]] = {}
  for item in items:
    b = bucket_for(length_of(item), buckets)
    group = pending.setdefault(b, [])
    group.append(item)
    if len(group) == batch_size:
      yield b, group
      pending[b] = []
  for b in sorted(pending):
    if pending[b]:
      yield b, pending[b]
