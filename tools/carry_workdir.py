r"""A pipeline workdir without its trained models and caches: small enough to carry to another machine
(or to keep beside a run's docs), and the same `qgjax pipeline` command goes on from it there.

  python tools/carry_workdir.py runs/dpo_qg_full/ce /tmp/ce_carry      # copy; prints what it left out
  # on the other machine, any path:
  qgjax pipeline <the same command> --config.workdir=<where /tmp/ce_carry was put>

Left out: each finished stage's `export/` and `checkpoints/` (trained models; the pipeline trains one
again only when a stage still to run reads it: qgjax.pipeline.runner.pending_stages) and the workdir's
shared corpus-embedding store `cache/` (rebuilt on demand). A training stage still running keeps its
latest complete checkpoint (older steps and unfinished saves are left out) and goes on from it there
(the checkpoint compares its input paths under the new workdir: qgjax.train.checkpoint). Stage markers
keep their fingerprints in another workdir (qgjax.pipeline.markers).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from anywhere
from qgjax.pipeline.markers import MARKER  # noqa: E402

LEFT_OUT_IN_STAGE = ("export", "checkpoints")
LEFT_OUT_AT_TOP = ("cache",)


def _size(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _older_steps(names: list[str]) -> list[str]:
  """Orbax step directories other than the latest complete one, and unfinished saves."""
  steps = [n for n in names if n.isdigit()]
  latest = max(steps, key=int) if steps else None
  return [n for n in names if (n.isdigit() and n != latest) or ".orbax-checkpoint-tmp" in n]


def carry(src: str, dst: str) -> dict:
  """Copies `src` to `dst` (which must not exist) without the models and caches -> {copied_bytes, left_out}."""
  if not os.path.isdir(src):
    raise SystemExit(f"{src}: not a directory")
  if os.path.exists(dst):
    raise SystemExit(f"{dst}: already exists; choose a new directory")
  left_out: dict[str, int] = {}

  def ignore(directory: str, names: list[str]) -> list[str]:
    rel = os.path.relpath(directory, src)
    depth = 0 if rel == "." else rel.count(os.sep) + 1
    drop = LEFT_OUT_AT_TOP if depth == 0 else LEFT_OUT_IN_STAGE if depth == 1 else ()
    out = [n for n in names if n in drop and os.path.isdir(os.path.join(directory, n))]
    if depth == 1 and not os.path.exists(os.path.join(directory, MARKER)):   # a stage still to finish
      out = [n for n in out if n != "checkpoints"]
    if depth == 2 and os.path.basename(directory) == "checkpoints":          # ... and its checkpoints
      out = _older_steps(names)
    for n in out:
      left_out[os.path.normpath(os.path.join(rel, n))] = _size(os.path.join(directory, n))
    return out

  shutil.copytree(src, dst, symlinks=True, ignore=ignore)
  return {"copied_bytes": _size(dst), "left_out": left_out}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("src", help="the pipeline's workdir")
  ap.add_argument("dst", help="a new directory")
  args = ap.parse_args(argv)
  out = carry(args.src, args.dst)
  for rel, n in sorted(out["left_out"].items()):
    print(f"left out {rel} ({n / 2**20:.1f} MiB)")
  print(f"copied {out['copied_bytes'] / 2**20:.1f} MiB to {args.dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
