r"""How many times BM25 sees the query before its AQE expansion, chosen on training queries
(qgjax.methods.aqe.repeats; the AQE recipe's `tune_repeats` stage wires input, data_dir, workdir).

  qgjax pipeline --config configs/aqe.py --config.tune_repeats.set.candidates=1,2,3,5,8

candidates: the repeat counts tried; samples_per_query: each training query's first sampled
expansions searched per count (the measure is averaged over them); join_samples: n > 0 joins a query's
first n expansions into one search instead; measure over the split's qrels.
"""

from __future__ import annotations

import ml_collections

from qgjax.retrieval.bm25 import default_bm25_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.input = ""          # expansion records of training queries (the generate_train output)
  c.data_dir = ""
  c.split = "train"
  c.workdir = "runs/tune_repeats"
  c.candidates = (1, 2, 3, 5, 8, 12, 16, 24, 32)
  c.samples_per_query = 2
  c.join_samples = 0    # n > 0: each query's first n expansions joined into one search (samples_per_query ignored)
  c.measure = "nDCG@10"
  c.depth = 100
  c.bm25 = default_bm25_config()
  return c
