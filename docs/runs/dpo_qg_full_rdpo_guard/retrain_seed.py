"""A finished pipeline retriever stage trained again with another seed: how far training noise alone moves it.

The seed decides the held-out tuples, the batch order and the in-batch draws (qgjax.train.infonce); everything else
is the stage's recorded config (its STAGE_DONE.json), so the data, model and steps are the same.

  .venv/bin/python docs/runs/dpo_qg_full_rdpo_guard/retrain_seed.py \
      /work/runs/dpo_qg_full/rdpo_guard3/retriever_aligned /work/runs/nfc_seed/retriever_aligned_seed1 1
"""
import json
import pathlib
import sys

import ml_collections

from qgjax.jobs import train
from qgjax.pipeline.markers import read_marker

src, out, seed = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
marker = read_marker(src)
if marker is None:
  sys.exit(f"{src}: not a finished pipeline stage (no STAGE_DONE.json)")
cfg = ml_collections.ConfigDict(marker["config"])
cfg.seed = seed
cfg.workdir = str(out)
cfg.export.dir = str(out / "export")
print(json.dumps(train.run(cfg), default=str)[:2000])
