"""`qgjax [-v] <stage> --config configs/x.py[:arg] [--config.key=value ...] [--print-config]`.

Each stage is a module with `run(config) -> dict | None` (see STAGES). The job's result is
printed to stdout as JSON; messages go to stderr through `qgjax.log` (`-v`/`--verbose`: DEBUG,
else QGJAX_LOG_LEVEL, else INFO). Errors that are the user's to fix (`QgjaxError`) print one
clear line and exit with code 2; `--help` prints to stdout and exits 0; no arguments print the
usage to stderr and exit 2; `--print-config` prints the resolved config and exits 0 without
running anything.

Why a hand-written parser and not `ml_collections.config_flags` with absl flags (big_vision's
way): the config side is the same (`path.py:arg` files with `get_config`, `--config.a.b=value`
overrides typed by the current value, done in `qgjax.config`), but absl has no subcommands
(`qgjax <stage>`), keeps parsed flags in a process-global FLAGS that tests calling `main(argv)`
many times in one process would have to unparse, exits 1 with a "FATAL Flags parsing error" and
the whole flag list on a bad override instead of one `qgjax: error:` line and exit 2, and
`app.run` moves Python logging onto absl's handler (absl's own `-v` is an integer verbosity).
What qgjax's overrides do beyond config_flags would have to be rebuilt on top of it anyway:
`<stage>.set.<key>` checked against that stage's own config file, `a,b` for tuples, and the
nearest valid key named for a misspelt one at any depth. ~80 lines of parser are the cheaper
side of that trade.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from typing import NamedTuple

from qgjax.errors import QgjaxError
from qgjax.log import resolve_level, setup_logging

log = logging.getLogger("qgjax.cli")  # not __name__: `python -m qgjax.cli` runs it as __main__

# stage -> (module, one-line description). Modules are imported only when their stage runs.
STAGES = {
    "generate": ("qgjax.jobs.generate", "sample n queries per document (or expansions per query)"),
    "score": ("qgjax.jobs.score", "attach a reward to each generated query (cross-encoder, BM25/dense rank, LM likelihood)"),
    "pairs": ("qgjax.jobs.pairs", "build preference pairs / best-of-n sets from scored queries"),
    "train": ("qgjax.jobs.train", "SFT / RSFT / DPO / ReadQG alignment, bi-encoder and cross-encoder training"),
    "mine": ("qgjax.jobs.mine", "encode the corpus, index it (ScaNN or exact) and mine hard negatives"),
    "evaluate": ("qgjax.jobs.evaluate", "BM25 / dense / re-ranked retrieval with nDCG, MRR, Recall, top-k; query-quality metrics"),
    "pipeline": ("qgjax.recipes", "run the whole recipe end to end, each stage cached and resumable"),
}

USAGE = """usage: qgjax [-v] <stage> --config configs/<job>.py[:arg] [--config.key=value ...] [--print-config]

stages:
{stages}

options:
  --config FILE[:arg]   the job's config file (a docstring at its top holds its exact command)
  --config.a.b=VALUE    override one key of the config (a misspelt key names the nearest one)
  --print-config        print the resolved config and exit without running the job
  -v, --verbose         log at DEBUG (else QGJAX_LOG_LEVEL: debug|info|warning|error, default info)
  -h, --help            this text; `qgjax <stage> --help` gives a stage's details"""


class Command(NamedTuple):
  """What a command line asks for: `help` (text for stdout) set means print it and stop; no
  `stage` means none was given (usage on stderr, exit 2)."""
  stage: str | None
  spec: str | None
  overrides: list[tuple[str, str]]
  print_config: bool
  verbose: bool
  help: str | None = None


def usage() -> str:
  width = max(map(len, STAGES))
  lines = [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in STAGES.items()]
  return USAGE.format(stages="\n".join(lines))


def stage_help(stage: str) -> str:
  module = importlib.import_module(STAGES[stage][0])
  return f"qgjax {stage}: {STAGES[stage][1]}\n\n{(module.__doc__ or '').strip()}"


def parse_args(argv: list[str]) -> Command:
  """argv (without the program name) -> Command. Raises QgjaxError for a malformed line."""
  verbose, rest = False, list(argv)
  while rest and rest[0] in ("-v", "--verbose"):  # `qgjax -v <stage> ...`
    verbose, rest = True, rest[1:]
  if not rest:  # no stage: main prints the usage to stderr, exit 2
    return Command(None, None, [], False, verbose)
  if rest[0] in ("-h", "--help", "help"):
    return Command(None, None, [], False, verbose, help=usage())
  stage, rest = rest[0], rest[1:]
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
      return Command(stage, spec, overrides, print_config, verbose, help=stage_help(stage))
    if arg in ("-v", "--verbose"):
      verbose = True
    elif arg == "--print-config":
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
      raise QgjaxError(f"unexpected argument '{arg}'; expected --config FILE, --config.key=value, "
                       "--print-config, -v or --help")
    i += 1
  if spec is None:
    raise QgjaxError(f"qgjax {stage} needs --config configs/<job>.py")
  return Command(stage, spec, overrides, print_config, verbose)


def _print_out(text: str) -> None:
  """`text` on stdout; a reader that went away (`qgjax --help | head`) is not an error."""
  try:
    print(text, flush=True)
  except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush is quiet too


def main(argv: list[str] | None = None) -> int:
  if argv is None:  # a real process: QGJAX_HUGE_PAGES=1 asks for the glibc tunable, read at start
    from qgjax.host_allocator import reexec_with_huge_pages
    reexec_with_huge_pages()
  argv = sys.argv[1:] if argv is None else argv
  try:
    cmd = parse_args(argv)
    setup_logging(resolve_level(cmd.verbose))
  except QgjaxError as e:
    setup_logging(logging.INFO)
    log.error("%s", e)
    return 2
  if cmd.help is not None:
    _print_out(cmd.help)
    return 0
  if cmd.stage is None:
    print(usage(), file=sys.stderr)
    return 2
  try:
    from qgjax.config import build_config
    config = build_config(cmd.spec, cmd.overrides)
    if cmd.print_config:
      _print_out(str(config))
      return 0
    from qgjax.parallel.distributed import maybe_initialize
    maybe_initialize()  # joins a multi-host run when a launcher set QGJAX_* variables
    from qgjax.parallel.compile_cache import enable_compilation_cache
    enable_compilation_cache()  # compiled programs reused by later runs, resumes and stages
    module = importlib.import_module(STAGES[cmd.stage][0])
    result = module.run(config)
  except QgjaxError as e:
    log.error("%s", e)
    return 2
  except OSError as e:
    import errno
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    # a full disk is the user's to fix, not a bug: one line; outputs are resumable where they stopped
    log.error("disk full (%s) writing %s: free space and run the same command again to resume", e.strerror,
              e.filename or "an output")
    return 2
  except OSError as e:
    import errno
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    # a full disk is the user's to fix, not a bug: one line; outputs are resumable where they stopped
    print(f"qgjax: error: disk full ({e.strerror}) writing {e.filename or 'an output'}: free space and run "
          "the same command again to resume", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    log.warning("interrupted; run the same command again to resume")
    return 130
  if result:
    _print_out(json.dumps(result, indent=2, default=str))
  return 0


if __name__ == "__main__":
  sys.exit(main())
