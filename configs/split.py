r"""Training / test queries for a recipe (AQE, ReadQG): the `split` stage of qgjax.jobs.split.

  qgjax pipeline --config configs/aqe.py --config.split.set.max_train=300 --config.split.set.max_test=100

how: auto (the collection's train_split queries if it has qrels for them, else hash) | splits |
hash (judged test_split queries cut by a seeded hash into disjoint train / test parts).
Arguments: how=auto|splits|hash.
"""

from __future__ import annotations

import ml_collections

from qgjax.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, how="auto")
  c = ml_collections.ConfigDict()
  c.data_dir = ""          # BEIR directory; "" = the shipped demo corpus
  c.workdir = "runs/split"
  c.how = a.how
  c.train_split = "train"
  c.test_split = "test"
  c.test_fraction = 0.5    # hash: share of the judged test queries kept for testing
  c.seed = 0
  c.max_train = 0          # 0 = all
  c.max_test = 0
  c.dev_queries = 0        # training queries (the largest hashes) set apart as a `dev` split; 0 = none
  return c
