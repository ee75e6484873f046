"""The persistent compilation cache the CLI turns on: a second process reads the program the first
compiled (a cache hit, same result), `QGJAX_COMPILATION_CACHE=0` turns it off, and a directory the
user chose for jax is left as it is, and a CPU backend with several devices runs without it (cached
XLA:CPU programs deadlock in their collectives). Each case runs in a fresh process (jax's config is
global)."""

import json
import os
import subprocess
import sys

from xla_flags import cpu_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r"""
import json, jax, jax.numpy as jnp
from jax import monitoring
from qgjax.parallel.compile_cache import enable_compilation_cache
hits = []
monitoring.register_event_listener(lambda name, **kw: hits.append(name) if name.endswith("cache_hits") else None)
path = enable_compilation_cache()
def f(x):
  for i in range(40):
    x = jnp.tanh(x @ x.T + i)
  return x.sum()
value = float(jax.jit(f)(jnp.arange(64.0).reshape(8, 8) / 64.0))
print(json.dumps({"path": path, "hits": len(hits), "value": value}))
"""


def _probe(env_extra, tmp_path, devices=1):
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "QGJAX_COMPILATION_CACHE")}
  env.update(QGJAX_CACHE_DIR=str(tmp_path / "home"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PLATFORMS="cpu", XLA_FLAGS=cpu_devices(devices), **env_extra)
  proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_second_process_reads_the_compiled_program(tmp_path):
  first = _probe({}, tmp_path)
  assert first["path"] == str(tmp_path / "home" / "xla") and first["hits"] == 0
  entries = [name for name in os.listdir(first["path"]) if name.endswith("-cache")]
  assert any(name.startswith("jit_f-") for name in entries)
  second = _probe({}, tmp_path)   # every program the first one compiled is read back, none compiled anew
  assert second["hits"] == len(entries) and second["value"] == first["value"]
  assert sorted(name for name in os.listdir(first["path"]) if name.endswith("-cache")) == sorted(entries)


def test_off_and_a_directory_the_user_chose(tmp_path):
  off = _probe({"QGJAX_COMPILATION_CACHE": "0"}, tmp_path)
  assert off["path"] is None and not (tmp_path / "home" / "xla").exists()
  mine = str(tmp_path / "jax-cache")
  chosen = _probe({"JAX_COMPILATION_CACHE_DIR": mine}, tmp_path)
  assert chosen["path"] == mine and not (tmp_path / "home" / "xla").exists()
  assert os.listdir(mine)  # jax itself wrote there
  other = _probe({"QGJAX_COMPILATION_CACHE": str(tmp_path / "elsewhere")}, tmp_path)
  assert other["path"] == str(tmp_path / "elsewhere") and os.listdir(other["path"])


def test_off_on_a_cpu_backend_with_several_devices(tmp_path):
  """Two simulated CPU devices: no directory is made, nothing is written, even to a directory the
  user chose for jax (a read-back sharded step would hang; docs/reliability.md)."""
  default = _probe({}, tmp_path, devices=2)
  assert default["path"] is None and not (tmp_path / "home" / "xla").exists()
  mine = tmp_path / "jax-cache"
  chosen = _probe({"JAX_COMPILATION_CACHE_DIR": str(mine)}, tmp_path, devices=2)
  assert chosen["path"] is None and not (mine.exists() and os.listdir(mine))
  assert chosen["value"] == default["value"] == _probe({}, tmp_path)["value"]
