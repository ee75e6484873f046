"""Is system B better than system A on these queries? Paired tests over per-query scores.

  a, b = per-query nDCG@10 of two systems (the same queries, same order)
  paired_randomization(a, b, samples=10_000, seed=0)  -> two-sided p-value of mean(b - a) (sign flips)
  paired_bootstrap_ci(a, b, samples=10_000, seed=0)   -> (low, high): 95% interval of mean(b - a)
  compare(a, b)                                       -> PairedComparison (mean diff, CI, p, wins/losses/ties)

The randomization test is the IR standard (Smucker, Allan & Carterette 2007): under the null
hypothesis each query's two scores are exchangeable, so the sign of each difference is flipped at
random; p = share of flips whose |mean| reaches the observed |mean| (the observed one counted,
so p >= 1 / (samples + 1)). `exact=True` enumerates all 2^n flips (small n; tests).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np


def _diffs(a, b) -> np.ndarray:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or not len(a):
    raise ValueError(f"need two per-query score vectors of one length; got shapes {a.shape} and {b.shape}")
  return b - a


def paired_randomization(a, b, samples: int = 10_000, seed: int = 0, exact: bool = False) -> float:
  """Two-sided p-value of mean(b - a) != 0 by random sign flips of the per-query differences."""
  d = _diffs(a, b)
  observed = abs(d.mean())
  tol = 1e-12 * max(1.0, observed)
  if exact:
    if len(d) > 20:
      raise ValueError(f"exact enumeration of 2^{len(d)} sign flips is too many; use samples")
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    return float(np.mean(np.abs(signs @ d / len(d)) >= observed - tol))
  rng = np.random.default_rng(seed)
  hits = 0
  for start in range(0, samples, 1000):
    signs = rng.choice((1.0, -1.0), size=(min(1000, samples - start), len(d)))
    hits += int(np.sum(np.abs(signs @ d / len(d)) >= observed - tol))
  return (hits + 1) / (samples + 1)


def paired_bootstrap_ci(a, b, samples: int = 10_000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
  """Percentile bootstrap interval of mean(b - a), resampling queries with replacement."""
  d = _diffs(a, b)
  rng = np.random.default_rng(seed)
  means = np.concatenate([d[rng.integers(0, len(d), size=(min(1000, samples - s), len(d)))].mean(axis=1)
                          for s in range(0, samples, 1000)])
  tail = (1.0 - level) / 2 * 100
  low, high = np.percentile(means, [tail, 100 - tail])
  return float(low), float(high)


@dataclasses.dataclass
class PairedComparison:
  """B against A over n queries: mean_a, mean_b, diff = mean(b - a), its 95% bootstrap interval,
  the randomization p-value, and how many queries B wins, loses and ties."""
  n: int
  mean_a: float
  mean_b: float
  diff: float
  ci_low: float
  ci_high: float
  p_value: float
  wins: int
  losses: int
  ties: int


def compare(a, b, samples: int = 10_000, seed: int = 0) -> PairedComparison:
  d = _diffs(a, b)
  low, high = paired_bootstrap_ci(a, b, samples, seed)
  return PairedComparison(n=len(d), mean_a=float(np.mean(a)), mean_b=float(np.mean(b)), diff=float(d.mean()),
                          ci_low=low, ci_high=high, p_value=paired_randomization(a, b, samples, seed),
                          wins=int(np.sum(d > 0)), losses=int(np.sum(d < 0)), ties=int(np.sum(d == 0)))
