r"""Starts a larger generation run from a finished smaller one: copies the smaller run's records and done
log into the new output directory, so `qgjax generate` there (or the pipeline stage) samples only the
inputs the smaller run did not have.

  python tools/seed_generation.py runs/aqe_half/generate_train runs/aqe_full/generate_train \
      --inputs runs/aqe_full/split/data/queries_train.jsonl

Sound because a sample's random key is folded from (sampling seed, input id, sample index)
(qgjax.sampling.keys), not from the batch it ran in: a run over more inputs draws the same samples for
the inputs both have (up to float rounding of a differently padded batch). Refused unless every seeded
input is in the new inputs file with the same text as in the old one; the copied manifest keeps the old
settings with paths moved to the new run's root (qgjax.data.settings_diff.moved_root), so `qgjax generate`
with any other setting still refuses the output by name. Query expansions (inputs: a queries file) and
document queries (inputs: a corpus) are supported; contrastive prompts are not (their negative
document is drawn from the whole corpus's ids, which a larger corpus changes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from anywhere
from qgjax.data.sharded_writer import MANIFEST, read_manifest  # noqa: E402
from qgjax.errors import ConfigError, InputError  # noqa: E402
from qgjax.data.safe_files import write_json_atomic  # noqa: E402
from qgjax.data.settings_diff import moved_root, relocated  # noqa: E402
from qgjax.sampling.done_log import DONE_FILE, done_ids, read_done_entries  # noqa: E402


def _input_texts(mode: str, path: str) -> dict[str, str]:
  """id -> text of the inputs a generation run of prompt `mode` reads from `path`."""
  if mode == "expansion":
    from qgjax.data.beir import load_queries
    return load_queries(path)
  from qgjax.sampling.sources import open_corpus
  return {doc.doc_id: doc.contents for doc in open_corpus(path)}


def seed(src: str, dst: str, inputs: str, *, limit: int = 0, offset: int = 0) -> dict:
  """Copies the finished output `src` into the new output dir `dst` (absent) for the new run's inputs
  file `inputs` and its data.limit / data.offset; returns {"seeded_inputs", "records", "meta_moved":
  [old root, new root]}."""
  src, dst = os.path.abspath(src), os.path.abspath(dst)
  manifest = read_manifest(src)
  if not manifest or not manifest.get("complete"):
    raise InputError("not a finished generation output (no complete manifest.json)", path=src)
  if os.path.exists(dst):
    raise ConfigError(f"{dst} already exists: seed a new output directory only")
  meta = manifest.get("meta") or {}
  mode = (meta.get("prompt") or {}).get("mode")
  if mode == "contrastive":
    raise ConfigError("contrastive outputs cannot be seeded: each negative is drawn from the whole corpus")
  key = "queries" if mode == "expansion" else "corpus"
  old_inputs = (meta.get("data") or {}).get(key)
  if not old_inputs or not os.path.exists(old_inputs):
    raise InputError(f"the smaller run's inputs (meta.data.{key}) are gone; they are needed to check the "
                     "seeded inputs' texts", path=old_inputs or src)
  old_root, new_root = moved_root(src, dst)
  new_meta = relocated(meta, old_root, new_root)
  # as the new run's config names them: the job compares these strings and numbers
  new_meta["data"].update({key: inputs, "limit": int(limit), "offset": int(offset)})
  entries = read_done_entries(src)
  seeded = done_ids(entries)
  old_texts, new_texts = _input_texts(mode, old_inputs), _input_texts(mode, inputs)
  window = list(new_texts)[int(offset):int(offset) + int(limit) if limit else None]   # the new run's inputs
  new_texts = {i: new_texts[i] for i in window}
  missing = sorted(i for i in seeded if i not in new_texts)
  if missing:
    raise InputError(f"{len(missing)} of the smaller run's inputs are not in the new inputs "
                     f"(first: {missing[:3]}); seed only a run over a superset", path=inputs)
  changed = sorted(i for i in seeded if old_texts.get(i) != new_texts[i])
  if changed:
    raise InputError(f"{len(changed)} inputs have other text than in the smaller run (first: {changed[:3]})",
                     path=inputs)
  os.makedirs(dst)
  for shard in manifest["shards"]:
    shutil.copyfile(os.path.join(src, shard["file"]), os.path.join(dst, shard["file"]))
  shutil.copyfile(os.path.join(src, DONE_FILE), os.path.join(dst, DONE_FILE))
  write_json_atomic(os.path.join(dst, MANIFEST), dict(manifest, meta=new_meta, complete=False))
  return {"seeded_inputs": len(seeded), "records": manifest["records"], "meta_moved": [old_root, new_root]}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("src", help="a finished generation output directory (the smaller run)")
  ap.add_argument("dst", help="the new run's output directory (must not exist)")
  ap.add_argument("--inputs", required=True, help="the new run's queries file (expansion) or corpus")
  ap.add_argument("--limit", type=int, default=0, help="the new run's data.limit (0: all inputs)")
  ap.add_argument("--offset", type=int, default=0, help="the new run's data.offset")
  args = ap.parse_args(argv)
  print(json.dumps(seed(args.src, args.dst, args.inputs, limit=args.limit, offset=args.offset)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
