"""Joining JAX's multi-controller runtime: every host runs the same `qgjax` command.

The launchers in `launch/` set these environment variables; nothing is set for a single process.

  QGJAX_DISTRIBUTED=auto            call `jax.distributed.initialize()` with no arguments: JAX
                                    detects TPU pod slices, SLURM and Open MPI clusters itself.
  QGJAX_COORDINATOR_ADDRESS=host:port, QGJAX_NUM_PROCESSES=N, QGJAX_PROCESS_ID=i
                                    explicit rendezvous (one process per GPU, or a localhost test);
                                    QGJAX_LOCAL_DEVICE_IDS=0,1 optionally pins this process's GPUs.
"""

from __future__ import annotations

import os

from qgjax.errors import ConfigError

_initialized = False


def maybe_initialize(env: dict[str, str] | None = None) -> bool:
  """Initialises `jax.distributed` when the environment asks for it; returns True if it did."""
  global _initialized
  env = os.environ if env is None else env
  if _initialized:
    return True
  mode = env.get("QGJAX_DISTRIBUTED", "").strip().lower()
  address = env.get("QGJAX_COORDINATOR_ADDRESS")
  if not mode and not address:
    return False
  import jax

  if address:
    try:
      num_processes = int(env["QGJAX_NUM_PROCESSES"])
      process_id = int(env["QGJAX_PROCESS_ID"])
    except KeyError as e:
      raise ConfigError(f"QGJAX_COORDINATOR_ADDRESS is set but {e.args[0]} is not") from None
    except ValueError as e:
      raise ConfigError(f"QGJAX_NUM_PROCESSES / QGJAX_PROCESS_ID must be integers: {e}") from None
    kwargs = {}
    if env.get("QGJAX_LOCAL_DEVICE_IDS"):
      kwargs["local_device_ids"] = [int(x) for x in env["QGJAX_LOCAL_DEVICE_IDS"].split(",")]
    jax.distributed.initialize(coordinator_address=address, num_processes=num_processes,
                               process_id=process_id, **kwargs)
  elif mode in ("auto", "1", "true"):
    jax.distributed.initialize()
  else:
    raise ConfigError(f"QGJAX_DISTRIBUTED={mode!r}: expected 'auto' (or set QGJAX_COORDINATOR_ADDRESS)")
  _initialized = True
  return True


def is_main_process() -> bool:
  """True on the process that logs and writes shared outputs (process 0)."""
  import jax

  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches `name` (no-op with one process)."""
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def agree(values: list[int]) -> list[int]:
  """Process 0's `values` (integers) on every process (unchanged with one process): a decision
  made from files that process 0 may already be changing, taken by all alike."""
  import jax
  if jax.process_count() == 1:
    return [int(v) for v in values]
  import numpy as np
  from jax.experimental import multihost_utils
  return [int(v) for v in multihost_utils.broadcast_one_to_all(np.asarray(values, np.int64))]
