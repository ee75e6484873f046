"""A device mesh from config: `config.mesh = [("data", -1), ("fsdp", 1), ("tensor", 1)]`.

One size may be -1 (all devices left over). The product must equal the number of devices
used (all of them unless `devices` is given). Axis types are `Auto`: the compiler propagates
shardings from the ones we declare on inputs, outputs and a few activations.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from qgjax.errors import ConfigError

DEFAULT_MESH = (("data", -1), ("fsdp", 1), ("tensor", 1))


def mesh_shape(spec: Sequence[Sequence], n_devices: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """[(name, size|-1), ...] -> (names, sizes) with the -1 resolved against `n_devices`."""
  names, sizes = [], []
  for item in spec:
    if len(item) != 2:
      raise ConfigError(f"mesh entries are (axis_name, size); got {item!r}")
    name, size = str(item[0]), int(item[1])
    if name in names:
      raise ConfigError(f"mesh axis {name!r} appears twice in {list(spec)!r}")
    if size == 0 or size < -1:
      raise ConfigError(f"mesh axis {name!r} has size {size}; use a positive size or -1")
    names.append(name)
    sizes.append(size)
  if sizes.count(-1) > 1:
    raise ConfigError(f"only one mesh axis may be -1; got {list(spec)!r}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % known:
      raise ConfigError(f"mesh {list(spec)!r}: {n_devices} devices do not divide by {known}")
    sizes[sizes.index(-1)] = n_devices // known
  if math.prod(sizes) != n_devices:
    raise ConfigError(f"mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices; "
                      f"{n_devices} are available")
  return tuple(names), tuple(sizes)


def make_mesh(spec: Sequence[Sequence] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the mesh over `devices` (default: every device of every process)."""
  spec = DEFAULT_MESH if spec is None else spec
  devices = list(jax.devices() if devices is None else devices)
  names, sizes = mesh_shape(spec, len(devices))
  if len(devices) == len(jax.devices()):
    # Lets JAX order devices for the physical topology (ICI rings on TPU, NVLink on GPU).
    return jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(names))
  return Mesh(np.asarray(devices, dtype=object).reshape(sizes), names,
              axis_types=(AxisType.Auto,) * len(names))


def mesh_from_config(config) -> Mesh:
  """`config.mesh` (empty = all devices on "data") -> Mesh; `config.num_devices` (0 = all) caps the count."""
  spec = config.mesh or DEFAULT_MESH
  n = int(config.num_devices or 0)
  devices = jax.devices()[:n] if n else None
  return make_mesh(spec, devices)
