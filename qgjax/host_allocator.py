"""Transparent huge pages for XLA:CPU's per-execution buffers (glibc's `malloc.hugetlb` tunable), opt-in.

XLA:CPU mallocs each execution's temporary buffer (every intermediate of the program: 2.73 GB
for the MiniLM InfoNCE step at batch 32 x 128) and frees it when the execution ends. glibc serves
anything above its mmap threshold (32 MB at most) with a fresh mapping, so each step touched
2.73 GB of new 4 KiB pages: 670k page faults a step (`getrusage`), 3.7-4.2 s a step. With
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` glibc (>= 2.35) madvises those mappings for transparent
huge pages: 2k faults a step, 3.3-3.4 s, i.e. 10-20% off the step (AMD EPYC host, 2026-12-02;
docs/benchmarks.md, "Huge pages").

glibc reads tunables once, when the process starts, so `reexec_with_huge_pages()` re-executes
the current program (same pid, argv and open files) with the tunable added, once, before any
work. Re-executing every process is a surprise for a command-line tool (a second start, an
environment that differs from the one the user gave), so it is OFF unless QGJAX_HUGE_PAGES=1
(or `true`/`yes`/`on`) is in the environment; the benchmarks in tools/ and the launch/ scripts
set it. Even then it does nothing off Linux/glibc >= 2.35, when THP is `never` or `always`
(nothing to gain), or when the tunable is already set.

  huge_pages_wanted(environ) -> bool     whether a re-exec would add the tunable
  reexec_with_huge_pages()               execve(sys.executable, sys.orig_argv) with it, if wanted
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_IN = "QGJAX_HUGE_PAGES"  # "1" asks for the re-exec; unset or anything else: none
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, ...] | None:
  name, version = platform.libc_ver()
  if name != "glibc" or not version:
    return None
  return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


def thp_mode(path: str = THP_ENABLED) -> str | None:
  """The kernel's THP mode ('always' | 'madvise' | 'never'), the bracketed word of `path`."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def huge_pages_wanted(environ: Mapping[str, str] | None = None) -> bool:
  env = os.environ if environ is None else environ
  if env.get(OPT_IN, "").strip().lower() not in ("1", "true", "yes", "on") or sys.platform != "linux":
    return False
  if "glibc.malloc.hugetlb" in env.get("GLIBC_TUNABLES", ""):
    return False
  version = _glibc_version()
  return version is not None and version >= (2, 35) and thp_mode() == "madvise"


def reexec_with_huge_pages() -> None:
  """Replace this process with itself under GLIBC_TUNABLES+=glibc.malloc.hugetlb=1 (if wanted)."""
  if not huge_pages_wanted():
    return
  env = dict(os.environ)
  env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), TUNABLE) if t)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)
