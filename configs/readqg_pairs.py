r"""ReadQG document-centric pairs (top-m / bottom-m judged queries per document): qgjax.methods.readqg.pairs.

  qgjax pipeline --config configs/readqg_recipe.py --config.pairs.set.m=2

m: positives and negatives per document; min_queries: judged queries a document needs (0 = 2m);
keep_flat: keep documents whose queries all share one grade.
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.data_dir = ""
  c.workdir = "runs/readqg_pairs"
  c.split = "train"
  c.m = 1
  c.min_queries = 0
  c.keep_flat = False
  c.seed = 0
  return c
