"""JAX's persistent compilation cache for qgjax's commands.

  path = enable_compilation_cache()   # before the first jit; -> the directory, or None when off

A job compiles its programs again in every process: the sampler for each prompt bucket, the
train step, the encoder for each length bucket. Those compiles are minutes of a short job on CPU
and are repeated by the run that resumes a killed job, by every pipeline stage that encodes with
the same model, and by every host of a pod. With this cache a program is compiled once per
machine and read back later (jax keys each entry by the program, the devices, the compile
options and XLA flags, and the jax version; entries are written only when a compile took at
least `jax_persistent_cache_min_compile_time_secs`).

Where: `$JAX_COMPILATION_CACHE_DIR` or an earlier `jax_compilation_cache_dir` setting when the
user made one; else `$QGJAX_COMPILATION_CACHE`; else `$QGJAX_CACHE_DIR/xla` (default
`~/.cache/qgjax/xla`). `QGJAX_COMPILATION_CACHE=0` turns it off. The directory is kept under
`MAX_BYTES` (jax evicts the least recently used entries). A gs:// URL is handed to jax as it is
(jax reads and writes it through etils epath), without a size limit: jax's eviction takes a file
lock, which exists on a local disk only.

Not on a CPU backend with more than one device (simulated meshes, `--xla_force_host_platform_
device_count`, and multi-process CPU runs): an XLA:CPU executable with collectives that is read back
from the cache deadlocks in them (jax 0.10.2: the second run of a (data=2, tensor=4) DPO step aborts
on a rendezvous timeout; the compiling run passes; docs/reliability.md). Such programs compile again
in every process; one-device CPU and accelerator programs are cached as before.
"""

from __future__ import annotations

import logging
import os

import jax

from qgjax.data import storage

MAX_BYTES = 4 << 30
_OFF = ("0", "off", "false", "no", "none")


def default_dir() -> str:
  from qgjax.paths import cache_root
  return os.path.join(cache_root(), "xla")


def cache_breaks_collectives() -> bool:
  """True where cached executables would hang in their collectives: CPU with more than one device."""
  return jax.default_backend() == "cpu" and jax.device_count() > 1


def enable_compilation_cache() -> str | None:
  """Turns the persistent cache on (see the module docstring) -> its directory, or None when off."""
  chosen = jax.config.jax_compilation_cache_dir   # jax reads $JAX_COMPILATION_CACHE_DIR into it
  if cache_breaks_collectives():
    if chosen:
      logging.getLogger(__name__).warning(
          "not using the compilation cache %s: %d CPU devices (cached XLA:CPU programs deadlock in "
          "their collectives)", chosen, jax.device_count())
      jax.config.update("jax_enable_compilation_cache", False)
    return None
  if chosen:
    return chosen
  setting = os.environ.get("QGJAX_COMPILATION_CACHE", "").strip()
  if setting.lower() in _OFF:
    return None
  if storage.is_remote(setting):
    jax.config.update("jax_compilation_cache_dir", setting)
    jax.config.update("jax_compilation_cache_max_size", -1)
    return setting
  path = os.path.abspath(os.path.expanduser(setting or default_dir()))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None   # a read-only home: run without the cache rather than fail the job
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  return path
