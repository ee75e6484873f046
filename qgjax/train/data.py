"""Training batches with static shapes, a deterministic order, and random access by step.

Examples are token-id lists per column (e.g. "prompt", "chosen", "rejected") plus float
scalars (e.g. "ref_chosen"). A `StepLoader` turns them into numpy batches:

  * static shapes: each column belongs to a length group; a batch pads the group to the
    smallest bucket that holds its longest member ("left" padding for decoder prompts, "right"
    for completions and encoder inputs), so a run compiles once per bucket, never per batch;
  * deterministic order: the permutation of epoch e comes from (seed, e); within windows of
    `bucket_window` batches examples are sorted by length (less padding), then the batches of
    the epoch are shuffled; the last partial batch is filled by wrapping around;
  * resumable: `batch(step)` is a pure function of the step, so a restarted run continues
    with exactly the batches it would have seen;
  * multi-host: `process_index/process_count` select this process's rows of the global batch;
  * shuffle=False: file order (reference / eval passes), with a "weight" column that is 0 on
    the rows that only fill the last batch (always 1 when shuffling).

  loader = StepLoader(columns, spec, batch_size=8, seed=0, buckets={"prompt": (128, 256), "completion": (32,)})
  batch = loader.batch(step)   # {"prompt": int32[B, Lp], "prompt_mask": bool[B, Lp], ..., "ref_chosen": f32[B]}
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from qgjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Column:
  """How one token column is padded: its length group and the side padding goes on."""
  group: str
  side: str = "right"   # "left" (decoder prompts) or "right"


def _bucket(length: int, buckets: Sequence[int]) -> int:
  for b in sorted(buckets):
    if length <= b:
      return int(b)
  return int(max(buckets))


class StepLoader:
  """Random access to fixed-shape batches by global step (see module docstring)."""

  def __init__(self, columns: Mapping[str, Sequence], spec: Mapping[str, Column], *, batch_size: int,
               buckets: Mapping[str, Sequence[int]], pad_id: int, seed: int = 0, bucket_window: int = 8,
               shuffle: bool = True, process_index: int = 0, process_count: int = 1):
    names = list(columns)
    if not names:
      raise ConfigError("no data columns")
    sizes = {len(columns[k]) for k in names}
    if len(sizes) != 1:
      raise ValueError(f"columns have different lengths: { {k: len(columns[k]) for k in names} }")
    self.num_examples = sizes.pop()
    if self.num_examples == 0:
      raise ConfigError("the training set is empty")
    if batch_size % process_count:
      raise ConfigError(f"batch_size {batch_size} must divide by the number of processes {process_count}")
    for name, col in spec.items():
      if col.group not in buckets:
        raise ConfigError(f"column {name!r} has length group {col.group!r} with no buckets; got {sorted(buckets)}")
    self.spec = dict(spec)
    self.token_columns = [k for k in names if k in spec]
    self.scalar_columns = [k for k in names if k not in spec]
    self.tokens = {k: [np.asarray(x, np.int32) for x in columns[k]] for k in self.token_columns}
    self.scalars = {k: np.asarray(columns[k], np.float32) for k in self.scalar_columns}
    self.batch_size, self.seed, self.pad_id = int(batch_size), int(seed), int(pad_id)
    self.buckets = {g: tuple(sorted(int(b) for b in v)) for g, v in buckets.items()}
    self.bucket_window = max(1, int(bucket_window))
    self.shuffle = bool(shuffle)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.steps_per_epoch = -(-self.num_examples // self.batch_size)
    self._sort_key = self._lengths(self.token_columns[0]) if self.token_columns else np.zeros(self.num_examples)
    self._epoch_cache: tuple[int, np.ndarray] | None = None
    self.truncated = {k: int(sum(len(x) > max(self.buckets[spec[k].group]) for x in self.tokens[k]))
                      for k in self.token_columns}

  def _lengths(self, column: str) -> np.ndarray:
    return np.asarray([len(x) for x in self.tokens[column]])

  def epoch_order(self, epoch: int) -> np.ndarray:
    """int[steps_per_epoch, batch_size]: example indices of every batch of `epoch`."""
    if self._epoch_cache and self._epoch_cache[0] == epoch:
      return self._epoch_cache[1]
    need = self.steps_per_epoch * self.batch_size
    if not self.shuffle:  # file order; the last batch wraps around (weight 0 on the repeats)
      order = np.arange(need) % self.num_examples
      self._epoch_cache = (epoch, order.reshape(self.steps_per_epoch, self.batch_size))
      return self._epoch_cache[1]
    rng = np.random.default_rng([self.seed, epoch])
    order = rng.permutation(self.num_examples)
    order = np.resize(order, need)  # wraps around as often as needed (fewer examples than one batch)
    window = self.bucket_window * self.batch_size
    chunks = []
    for start in range(0, need, window):
      chunk = order[start: start + window]
      chunks.append(chunk[np.argsort(self._sort_key[chunk], kind="stable")])
    batches = np.concatenate(chunks).reshape(self.steps_per_epoch, self.batch_size)
    batches = batches[rng.permutation(self.steps_per_epoch)]
    self._epoch_cache = (epoch, batches)
    return batches

  def indices(self, step: int) -> np.ndarray:
    """This process's example indices for global `step`."""
    epoch, within = divmod(int(step), self.steps_per_epoch)
    rows = self.epoch_order(epoch)[within]
    per = self.batch_size // self.process_count
    return rows[self.process_index * per: (self.process_index + 1) * per]

  def _pad(self, seqs: list[np.ndarray], length: int, side: str) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.full((len(seqs), length), self.pad_id, np.int32)
    mask = np.zeros((len(seqs), length), bool)
    for i, s in enumerate(seqs):
      s = s[-length:] if side == "left" else s[:length]   # left-padded columns keep their end
      n = len(s)
      sl = slice(length - n, length) if side == "left" else slice(0, n)
      tokens[i, sl] = s
      mask[i, sl] = True
    return tokens, mask

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of the global batch at `step` (numpy, static shapes)."""
    idx = self.indices(step)
    # Bucket lengths come from the GLOBAL batch so every process pads to the same shape.
    epoch, within = divmod(int(step), self.steps_per_epoch)
    global_rows = self.epoch_order(epoch)[within]
    group_len: dict[str, int] = {}
    for name in self.token_columns:
      group = self.spec[name].group
      longest = max(len(self.tokens[name][i]) for i in global_rows)
      group_len[group] = max(group_len.get(group, 0), _bucket(longest, self.buckets[group]))
    out: dict[str, np.ndarray] = {}
    for name in self.token_columns:
      col = self.spec[name]
      out[name], out[name + "_mask"] = self._pad([self.tokens[name][i] for i in idx], group_len[col.group], col.side)
    for name in self.scalar_columns:
      out[name] = self.scalars[name][idx]
    # weight 1 for every row of a shuffled epoch; 0 for the wrap-around repeats of a file-order pass
    position = (int(step) % self.steps_per_epoch) * self.batch_size + self.process_index * len(idx) + np.arange(len(idx))
    out["weight"] = (np.ones(len(idx)) if self.shuffle else (position < self.num_examples)).astype(np.float32)
    return out

  def shapes(self) -> set[tuple]:
    """Distinct batch shape signatures over one epoch (= programs the step compiles)."""
    return {tuple(sorted((k, v.shape) for k, v in self.batch(s).items())) for s in range(self.steps_per_epoch)}
