"""Data-parallel batched inference: the rows of a batch split over every device of every process.

Encoders, cross-encoders and LM judges score many independent rows with one jitted forward.
`RowParallel` runs such a forward on a 1-D ("data",) mesh: it pads the batch to a multiple of
the device count (copies of the last row, dropped afterwards), places row block i on device i,
runs the forward with replicated parameters and returns the outputs as numpy, in row order, on
every process (the program's output sharding is replicated, so XLA all-gathers the rows).

Multi-host contract: every process calls with the same rows in the same order (each holds the
same corpus and records, as the score, mine and evaluate jobs do). Each device reads only its
own block (`jax.make_array_from_callback`), so each host computes 1/P of the rows and every host
receives all outputs. Outputs equal one device's up to float reassociation inside the forward
(tests/test_data_parallel_encoding.py: 8 simulated devices against 1).

  mesh = data_mesh()                          # every device; data_mesh(n): the first n
  params = replicate(params, mesh)            # once, at load (a no-op when already replicated)
  run = RowParallel(fn, mesh)                 # fn(params, *rows) -> [B, ...] (a pytree of them)
  out = run(params, tokens, mask)             # numpy, B rows in input order

Process-local mode: inside `with process_local():` `data_mesh()` holds this process's devices
only, so each process encodes its own rows (a stage that splits its records over processes)
with no collective across processes; the outputs are this process's rows only.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from qgjax.errors import ConfigError

AXIS = "data"
_local_depth = 0   # > 0 inside `process_local()`


@contextlib.contextmanager
def process_local() -> Iterator[None]:
  """Inside: `data_mesh()` spans this process's devices only (each process runs its own rows)."""
  global _local_depth
  _local_depth += 1
  try:
    yield
  finally:
    _local_depth -= 1


def data_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D ("data",) mesh over every device of every process, or of this process inside
  `process_local()` (the first `num_devices` if > 0)."""
  from qgjax.parallel.mesh import make_mesh
  devices = jax.local_devices() if _local_depth else jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ConfigError(f"num_devices={num_devices} but there are {len(devices)} devices")
    devices = devices[:num_devices]
  return make_mesh([(AXIS, -1)], devices)


def padded_rows(n: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is >= n (and >= multiple)."""
  return multiple * max(-(-n // multiple), 1)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Every leaf as a global array replicated over `mesh`; leaves already so placed are kept."""
  sharding = NamedSharding(mesh, P())
  local = not mesh.is_multi_process

  def put(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # replicated over another mesh
      x = x.addressable_data(0)
    if local and isinstance(x, jax.Array):
      return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(put, tree)


class RowParallel:
  """`fn(params, *rows)` jitted over a ("data",) mesh; call with host arrays of B rows each.

  Rows of the inputs (axis 0, None inputs pass through) are split over the mesh's devices;
  the outputs (arrays or a pytree of arrays, each [B, ...]) come back as numpy [B, ...].
  """

  def __init__(self, fn: Callable[..., Any], mesh: Mesh | None = None):
    self.mesh = mesh if mesh is not None else data_mesh()
    if self.mesh.axis_names != (AXIS,):
      raise ConfigError(f"RowParallel needs a 1-D ('{AXIS}',) mesh; got axes {self.mesh.axis_names}")
    self.rows = NamedSharding(self.mesh, P(AXIS))
    self.replicated = NamedSharding(self.mesh, P())
    self._jitted = jax.jit(fn, out_shardings=self.replicated)

  @property
  def num_devices(self) -> int:
    return int(self.mesh.size)

  def compiled_shapes(self) -> int:
    """How many programs were compiled (one per distinct input shape)."""
    return int(self._jitted._cache_size())

  def put_rows(self, x: np.ndarray, rows: int) -> jax.Array:
    """Host array [n, ...] -> a global [rows, ...] array split by rows (padded with its last row)."""
    x = np.asarray(x)
    if x.shape[0] < rows:
      x = np.concatenate([x, np.repeat(x[-1:], rows - x.shape[0], axis=0)])
    if not self.mesh.is_multi_process:
      return jax.device_put(x, self.rows)
    return jax.make_array_from_callback(x.shape, self.rows, lambda idx: x[idx])

  def submit(self, params: Any, *arrays: np.ndarray | None) -> tuple[Any, int]:
    """Dispatches the forward without waiting: -> (device outputs, n) for `fetch`."""
    present = [a for a in arrays if a is not None]
    if not present:
      raise ValueError("RowParallel needs at least one input array")
    n = int(np.shape(present[0])[0])
    if n == 0 or any(int(np.shape(a)[0]) != n for a in present):
      raise ValueError(f"inputs need the same number (> 0) of rows; got {[np.shape(a) for a in present]}")
    rows = padded_rows(n, self.num_devices)
    placed = [None if a is None else self.put_rows(a, rows) for a in arrays]
    return self._jitted(replicate(params, self.mesh), *placed), n

  @staticmethod
  def fetch(pending: tuple[Any, int]) -> Any:
    """`submit`'s result -> numpy outputs [n, ...] (this process's copy of the replicated rows)."""
    out, n = pending
    return jax.tree.map(lambda o: np.asarray(o.addressable_data(0))[:n], out)

  def __call__(self, params: Any, *arrays: np.ndarray | None) -> Any:
    return self.fetch(self.submit(params, *arrays))
