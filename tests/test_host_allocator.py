"""The huge-page re-exec: opt-in, when it applies, and that it cuts the faults of a large malloc for real."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from qgjax import host_allocator as ha

# Re-execs itself (as `qgjax` does), then mallocs and touches 256 MiB the way XLA:CPU's temp
# buffer is allocated, and reports the minor page faults that took.
PROBE = textwrap.dedent("""
  import ctypes, json, os, resource, sys
  from qgjax.host_allocator import reexec_with_huge_pages
  reexec_with_huge_pages()
  libc = ctypes.CDLL(None)
  libc.malloc.restype = ctypes.c_void_p
  n = 256 << 20
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(ctypes.c_size_t(n))
  ctypes.memset(p, 1, n)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
  print(json.dumps({"faults": faults, "tunables": os.environ.get("GLIBC_TUNABLES", ""), "argv": sys.argv[1:]}))
""")


def _probe(tmp_path, **env):
  script = tmp_path / "probe.py"
  script.write_text(PROBE)
  full = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", ha.OPT_IN)}
  full.update(env)
  out = subprocess.run([sys.executable, str(script), "an-arg"], env=full, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_wanted_only_when_asked_for_and_without_the_tunable(monkeypatch):
  monkeypatch.setattr(ha, "thp_mode", lambda path=ha.THP_ENABLED: "madvise")
  monkeypatch.setattr(ha, "_glibc_version", lambda: (2, 36))
  monkeypatch.setattr(ha.sys, "platform", "linux")
  on = {ha.OPT_IN: "1"}
  assert not ha.huge_pages_wanted({})  # off by default
  for value in ("0", "", "no", "2"):
    assert not ha.huge_pages_wanted({ha.OPT_IN: value}), value
  for value in ("1", "true", "TRUE"):
    assert ha.huge_pages_wanted({ha.OPT_IN: value}), value
  assert ha.huge_pages_wanted({**on, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
  assert not ha.huge_pages_wanted({**on, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"})
  monkeypatch.setattr(ha, "_glibc_version", lambda: (2, 34))  # the tunable came in 2.35
  assert not ha.huge_pages_wanted(on)
  monkeypatch.setattr(ha, "_glibc_version", lambda: (2, 36))
  for mode in ("always", "never", None):  # nothing to gain, or nothing to ask for
    monkeypatch.setattr(ha, "thp_mode", lambda path=ha.THP_ENABLED, m=mode: m)
    assert not ha.huge_pages_wanted(on)


def test_thp_mode_reads_the_bracketed_word(tmp_path):
  f = tmp_path / "enabled"
  f.write_text("always [madvise] never\n")
  assert ha.thp_mode(str(f)) == "madvise"
  assert ha.thp_mode(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not ha.huge_pages_wanted({ha.OPT_IN: "1"}), reason="needs Linux, glibc >= 2.35 and THP in madvise mode")
def test_reexec_only_when_asked_adds_the_tunable_once_and_cuts_the_page_faults(tmp_path):
  pages = (256 << 20) // 4096
  plain = _probe(tmp_path)  # not asked for: no re-exec
  assert plain["tunables"] == "" and plain["faults"] > pages // 2, plain  # 4 KiB pages, one fault each
  off = _probe(tmp_path, **{ha.OPT_IN: "0"})
  assert off["tunables"] == "", off
  huge = _probe(tmp_path, GLIBC_TUNABLES="glibc.malloc.arena_max=4", **{ha.OPT_IN: "1"})
  assert huge["tunables"] == "glibc.malloc.arena_max=4:" + ha.TUNABLE, huge  # added once, kept the rest
  assert huge["argv"] == ["an-arg"]
  assert huge["faults"] < pages // 16, huge  # 2 MiB pages: ~128 faults
