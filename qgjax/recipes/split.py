"""The `split` stage AQE and ReadQG share: training / test queries of the collection (qgjax.jobs.split).

Later stages read the derived BEIR directory `split_data(at)` = <workdir>/split/data.
"""

from __future__ import annotations

import os

from qgjax.pipeline.stage import Stage, data_dir, has_file
from qgjax.recipes import jobs


def split_data(at) -> str:
  """The split's BEIR directory (corpus, queries_{train,test}.jsonl, qrels/{train,test}.tsv)."""
  return os.path.join(at("split"), "data")


def _wire(p, at):
  return {"data_dir": data_dir(p), "workdir": at("self")}


SPLIT = Stage("split", jobs.SPLIT, ("split",), (), _wire, has_file("split.json"))
