"""retention@k: the fraction of generated queries whose source document a retriever ranks in
its top k (2505.19307 reports 62% -> 92% at k=100 after alignment)."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def retention_at_k(ranks: Sequence[int] | np.ndarray, ks: Iterable[int] = (1, 10, 100)
                   ) -> dict[str, float]:
  """{"retention@k": mean(rank <= k)} for each k; ranks are 1-based (depth + 1 = not found)."""
  ranks = np.asarray(ranks)
  if ranks.size == 0:
    return {f"retention@{int(k)}": 0.0 for k in ks}
  return {f"retention@{int(k)}": float(np.mean(ranks <= int(k))) for k in ks}
