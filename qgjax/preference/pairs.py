"""Preference pairs and best-of-n selection from scored candidates of one document (or query).

A candidate is a generated text with a reward (higher is better) and its sample index.
Everything is deterministic: ties go to the lower sample index.

  all_pairs(cands, margin, cap)   every (i, j) with r_i > r_j + margin; with a cap, the pairs
                                  with the largest reward gap are kept (2505.19307)
  best_vs_worst(cands, margin)    the best against the worst, if r_best > r_worst + margin (AQE)
  best_of_n(cands, n, min_reward) the n best (reward >= min_reward) for RSFT

`can_choose(candidate) -> bool` (optional, every function): candidates it refuses are never a
chosen / best one, but can still be the rejected one (e.g. queries that copy their document).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

STRATEGIES = ("all", "best_worst")
CanChoose = Callable[["Candidate"], bool] | None


@dataclasses.dataclass(frozen=True)
class Candidate:
  sample_idx: int
  text: str
  reward: float
  record: Any = None  # the scored record it came from (for extra fields)


def _by_quality(c: Candidate) -> tuple:
  return (-c.reward, c.sample_idx)


def all_pairs(cands: Sequence[Candidate], margin: float = 0.0, cap: int = 0, can_choose: CanChoose = None
              ) -> list[tuple[Candidate, Candidate]]:
  """(chosen, rejected) for every ordered pair with r_chosen > r_rejected + margin.

  Pairs whose texts are equal are skipped. With cap > 0 the `cap` pairs with the largest gap
  are kept (ties: lower chosen, then lower rejected sample index). Output order: gap
  descending, then sample indices.
  """
  pairs = []
  for a in cands:
    if can_choose is not None and not can_choose(a):
      continue
    for b in cands:
      if a.reward > b.reward + margin and a.text != b.text:
        pairs.append((a, b))
  pairs.sort(key=lambda p: (-(p[0].reward - p[1].reward), p[0].sample_idx, p[1].sample_idx))
  return pairs[:cap] if cap > 0 else pairs


def best_vs_worst(cands: Sequence[Candidate], margin: float = 0.0, can_choose: CanChoose = None
                  ) -> list[tuple[Candidate, Candidate]]:
  """[(best, worst)] when r_best > r_worst + margin and their texts differ, else []."""
  ranked = [c for c in sorted(cands, key=_by_quality) if can_choose is None or can_choose(c)]
  if len(cands) < 2 or not ranked:
    return []
  best = ranked[0]
  worst = min(cands, key=lambda c: (c.reward, c.sample_idx))
  if best.reward > worst.reward + margin and best.text != worst.text:
    return [(best, worst)]
  return []


def best_of_n(cands: Sequence[Candidate], n: int = 1, min_reward: float | None = None,
              can_choose: CanChoose = None) -> list[Candidate]:
  """The n highest-reward candidates with distinct texts (and reward >= min_reward)."""
  out, seen = [], set()
  for c in sorted(cands, key=_by_quality):
    if min_reward is not None and c.reward < min_reward:
      break
    if c.text in seen or (can_choose is not None and not can_choose(c)):
      continue
    seen.add(c.text)
    out.append(c)
    if len(out) == n:
      break
  return out


def make_pairs(cands: Sequence[Candidate], strategy: str, margin: float = 0.0, cap: int = 0,
               can_choose: CanChoose = None) -> list[tuple[Candidate, Candidate]]:
  if strategy == "all":
    return all_pairs(cands, margin, cap, can_choose)
  if strategy == "best_worst":
    return best_vs_worst(cands, margin, can_choose)
  from qgjax.errors import ConfigError
  raise ConfigError(f"unknown pair strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
