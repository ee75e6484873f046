r"""Best-of-N expansion per query by a test-time criterion (no qrels): the AQE recipe's filter baseline.

  qgjax pipeline --config configs/aqe.py --config.select.set.criterion=likelihood

criterion: consensus (most agreement with the other expansions) | likelihood (generator's mean
token log-prob). See qgjax.methods.aqe.select.
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.input = ""
  c.workdir = "runs/select"
  c.criterion = "consensus"
  return c
