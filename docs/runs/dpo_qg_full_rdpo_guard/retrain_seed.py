"""A finished pipeline retriever stage trained again with another seed: how far training noise alone moves it.

The seed decides the held-out tuples, the batch order and the in-batch draws (qgjax.train.infonce); everything else
is the stage's recorded config (its STAGE_DONE.json), so the data, model and steps are the same. With a fourth
argument, a finished evaluate stage of the same run, the new export is then evaluated with that stage's recorded
config (collection, split, measures, embedding cache) into OUT/evaluate.

  .venv/bin/python docs/runs/dpo_qg_full_rdpo_guard/retrain_seed.py \\
      /work/runs/dpo_qg_full/rdpo_guard3/retriever_aligned /work/runs/nfc_seed/retriever_aligned_seed1 1 \\
      [/work/runs/dpo_qg_full/rdpo_guard3/evaluate_aligned]
"""
import json
import pathlib
import sys

import ml_collections

from qgjax.jobs import evaluate, train
from qgjax.pipeline.markers import read_marker


def stage_config(stage: pathlib.Path) -> ml_collections.ConfigDict:
  marker = read_marker(stage)
  if marker is None:
    sys.exit(f"{stage}: not a finished pipeline stage (no STAGE_DONE.json)")
  return ml_collections.ConfigDict(marker["config"])


src, out, seed = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
cfg = stage_config(src)
cfg.seed = seed
cfg.workdir = str(out)
cfg.export.dir = str(out / "export")
print(json.dumps(train.run(cfg), default=str)[:2000])
if len(sys.argv) > 4:
  ev = stage_config(pathlib.Path(sys.argv[4]))
  ev.dense.model = cfg.export.dir
  ev.workdir = str(out / "evaluate")
  print(json.dumps(evaluate.run(ev)["systems"], default=str))
