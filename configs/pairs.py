r"""Preference pairs (DPO) and best-of-n sets (RSFT) from scored queries.

  qgjax score --config configs/score.py:tiny && qgjax pairs --config configs/pairs.py:tiny
  qgjax pairs --config configs/pairs.py --config.input=runs/nfcorpus/score/scored \
      --config.workdir=runs/nfcorpus/pairs --config.strategy=best_worst

Reads the score stage's output; groups candidates by document (AQE: by query); writes
<workdir>/pairs.jsonl ({doc_id, chosen, rejected, reward_chosen, reward_rejected, ...}, what
`qgjax train --config configs/dpo.py` reads), <workdir>/rsft.jsonl ({doc_id, query, reward, ...})
and summary.json. `reward` names the record field ("reward" = the score stage's primary
reward) or one of its `rewards`. strategy: all (every pair with R(q+) > R(q-) + margin, the
max_pairs_per_doc largest gaps) or best_worst (AQE). Arguments: tiny.
"""

from __future__ import annotations

import ml_collections

from qgjax.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, tiny=False)
  c = ml_collections.ConfigDict()
  c.input = "runs/score/scored"
  c.workdir = "runs/pairs"
  c.reward = "reward"
  c.strategy = "all"  # or "best_worst"
  c.margin = 0.0
  c.max_pairs_per_doc = 4  # 0: no cap
  c.rsft = ml_collections.ConfigDict(dict(n_best=1, min_reward=None))  # None: no threshold
  # copy guard: a query repeating more than this many consecutive words of its document is never chosen
  # (only rejected); 0 = off. Needs data_dir, the corpus (the DPO-QG pipeline sets it)
  c.chosen_max_copied_span = 0
  c.data_dir = ""
  c.overwrite = False  # outputs from different settings or input are kept unless true
  if a.tiny:
    c.input = "runs/tiny/score/scored"
    c.workdir = "runs/tiny/pairs"
    c.max_pairs_per_doc = 3
  return c
