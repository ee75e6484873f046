"""What every reward scorer sees and returns.

A `RewardBatch` holds, per generated record: the text to score (the query; for AQE the query
followed by its expansion) and its target documents (the source document of a generated
query; the judged-relevant documents of an AQE query). A scorer returns a `ScoreOutput`:
rewards (float64 [n], higher is better) and, for retrieval-based rewards, ranks (int32 [n],
1 = best, `depth + 1` when below the depth).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

import numpy as np

from qgjax.errors import ConfigError

RANK_TRANSFORMS = ("neg_rank", "reciprocal")


@dataclasses.dataclass
class RewardBatch:
  texts: list[str]  # what is scored against the targets
  targets: list[list[str]]  # doc ids per record (>= 1)
  records: list[dict]

  def __len__(self) -> int:
    return len(self.texts)


@dataclasses.dataclass
class ScoreOutput:
  rewards: dict[str, np.ndarray]
  ranks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


class Scorer(Protocol):
  """Produces some of the named rewards for a batch."""

  def __call__(self, batch: RewardBatch) -> ScoreOutput: ...


@dataclasses.dataclass
class RewardContext:
  """What builders get: the score config, the corpus, and a cache to share models between rewards."""
  config: Any
  corpus: Any
  cache: dict = dataclasses.field(default_factory=dict)


def rank_reward(ranks: np.ndarray, transform: str) -> np.ndarray:
  """Ranks (1 = best) -> rewards where higher is better: -rank, or 1 / rank."""
  ranks = np.asarray(ranks, np.float64)
  if transform == "neg_rank":
    return -ranks
  if transform == "reciprocal":
    return 1.0 / ranks
  raise ConfigError(f"unknown rank_reward '{transform}'; choose one of {', '.join(RANK_TRANSFORMS)}")


def aqe_text(query: str, expansion: str, query_repeats: int = 1) -> str:
  """The retrieval text of an expanded query: the query (repeated, as query2doc does for BM25)
  followed by the expansion."""
  return " ".join([query] * max(int(query_repeats), 1) + [expansion])


def best_over_targets(values: Sequence[np.ndarray], counts: Sequence[int], higher: bool = True
                      ) -> np.ndarray:
  """Flattened per-(record, target) values -> the best per record (max, or min if not higher)."""
  out, start = [], 0
  flat = np.asarray(values)
  for n in counts:
    chunk = flat[start:start + n]
    out.append(chunk.max() if higher else chunk.min())
    start += n
  return np.asarray(out)
