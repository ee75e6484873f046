"""`qgjax <stage> --config configs/x.py[:arg] [--config.key=value ...]`.

Each stage is a module `qgjax.jobs.<stage>` with `run(config) -> dict | None`. Errors that are
the user's to fix (`QgjaxError`) print one clear line and exit with code 2.
"""

from __future__ import annotations

import importlib
import json
import sys

from qgjax.errors import QgjaxError

# stage -> (module, one-line description). Modules are imported only when their stage runs.
STAGES = {
    "generate": ("qgjax.jobs.generate", "sample n queries per document (or expansions per query)"),
    "score": ("qgjax.jobs.score", "attach a reward to each generated query (cross-encoder, BM25/dense rank, LM likelihood)"),
    "pairs": ("qgjax.jobs.pairs", "build preference pairs / best-of-n sets from scored queries"),
    "train": ("qgjax.jobs.train", "SFT / RSFT / DPO / ReadQG alignment, bi-encoder and cross-encoder training"),
    "mine": ("qgjax.jobs.mine", "encode the corpus, index it (ScaNN or exact) and mine hard negatives"),
    "evaluate": ("qgjax.jobs.evaluate", "BM25 / dense / re-ranked retrieval with nDCG, MRR, Recall, top-k; query-quality metrics"),
    "pipeline": ("qgjax.jobs.pipeline", "run the whole recipe end to end, each stage cached and resumable"),
}

USAGE = """usage: qgjax <stage> --config configs/<job>.py[:arg] [--config.key=value ...] [--print-config]

stages:
{stages}

Run `qgjax <stage> --help` for a stage's details. Each config's docstring holds its exact command."""


def _usage() -> str:
  width = max(map(len, STAGES))
  lines = [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in STAGES.items()]
  return USAGE.format(stages="\n".join(lines))


def parse_args(argv: list[str]) -> tuple[str, str, list[tuple[str, str]], bool]:
  """argv (without program name) -> (stage, config spec, overrides, print_config)."""
  if not argv or argv[0] in ("-h", "--help", "help"):
    raise SystemExit(_usage())
  stage, rest = argv[0], argv[1:]
  if stage not in STAGES:
    import difflib
    close = difflib.get_close_matches(stage, STAGES, n=1)
    hint = f" did you mean '{close[0]}'?" if close else ""
    raise QgjaxError(f"unknown stage '{stage}';{hint} stages: {', '.join(STAGES)}")
  spec, overrides, print_config = None, [], False
  i = 0
  while i < len(rest):
    arg = rest[i]
    if arg in ("-h", "--help"):
      module = importlib.import_module(STAGES[stage][0])
      raise SystemExit(f"qgjax {stage}: {STAGES[stage][1]}\n\n{(module.__doc__ or '').strip()}")
    if arg == "--print-config":
      print_config = True
    elif arg == "--config" or arg.startswith("--config="):
      if arg == "--config":
        if i + 1 >= len(rest):
          raise QgjaxError("--config needs a file: --config configs/<job>.py")
        i += 1
        spec = rest[i]
      else:
        spec = arg.split("=", 1)[1]
    elif arg.startswith("--config."):
      body = arg[len("--config."):]
      if "=" in body:
        key, value = body.split("=", 1)
      elif i + 1 < len(rest):
        key, value = body, rest[i + 1]
        i += 1
      else:
        raise QgjaxError(f"{arg} needs a value: {arg}=...")
      overrides.append((key, value))
    else:
      raise QgjaxError(f"unexpected argument '{arg}'; expected --config FILE or --config.key=value")
    i += 1
  if spec is None:
    raise QgjaxError(f"qgjax {stage} needs --config configs/<job>.py")
  return stage, spec, overrides, print_config


def main(argv: list[str] | None = None) -> int:
  if argv is None:  # a real process: huge pages for XLA:CPU's buffers need the tunable at start
    from qgjax.host_allocator import reexec_with_huge_pages
    reexec_with_huge_pages()
  argv = sys.argv[1:] if argv is None else argv
  try:
    stage, spec, overrides, print_config = parse_args(argv)
    from qgjax.config import build_config
    from qgjax.parallel.distributed import maybe_initialize
    config = build_config(spec, overrides)
    maybe_initialize()  # joins a multi-host run when a launcher set QGJAX_* variables
    from qgjax.parallel.compile_cache import enable_compilation_cache
    enable_compilation_cache()  # compiled programs reused by later runs, resumes and stages
    if print_config:
      print(config)
    module = importlib.import_module(STAGES[stage][0])
    result = module.run(config)
  except QgjaxError as e:
    print(f"qgjax: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("qgjax: interrupted; run the same command again to resume", file=sys.stderr)
    return 130
  if result:
    print(json.dumps(result, indent=2, default=str))
  return 0


if __name__ == "__main__":
  sys.exit(main())
