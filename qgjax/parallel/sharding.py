"""Logical axis names -> mesh axes -> `NamedSharding`, and putting arrays on the mesh.

Model parameters carry logical axis names (`nn.with_logical_partitioning`); one rules table
maps each name to mesh axes (flax's `nn.logical_to_mesh_axes`, first matching rule wins and a
mesh axis is used once per array). A dimension that the mesh axes do not divide is left
replicated, so a tiny test model and a 1.7B model share one table.

  rules_for(mesh, overrides)             -> the rules table restricted to the mesh's axes
  tree_shardings(abstract, mesh, rules)  -> NamedSharding tree for a (boxed) abstract tree
  sharded_init(fn, mesh, rules, *args)   -> fn's output created directly in its shardings
  put_on_mesh(tree, shardings)           -> host (numpy) tree -> global arrays, any #processes
  batch_sharding(mesh, ndim, rules)      -> NamedSharding of a [batch, ...] array
  put_batch(local_batch, mesh, rules)    -> this process's rows -> one global batch
  activate(mesh, rules)                  -> context: mesh + rules for tracing / logical constraints
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# (logical name, mesh axes). Batch rows spread over data and fsdp; parameters are sharded
# over fsdp along "embed" (ZeRO-3 style) and over tensor along heads / mlp / vocab (Megatron).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("embed", "fsdp"),
    ("classes", None),
    ("head_dim", None),
    ("layers", None),
    ("relpos_buckets", None),
    ("prompt_len", None),
    ("length", None),
)


def _mesh_axes_in(axes: Any, mesh: Mesh) -> Any:
  """Drops mesh axis names the mesh lacks ("tensor" on a data-only mesh)."""
  if axes is None:
    return None
  if isinstance(axes, str):
    return axes if axes in mesh.axis_names else None
  kept = tuple(a for a in axes if a in mesh.axis_names)
  return kept if len(kept) > 1 else (kept[0] if kept else None)


def rules_for(mesh: Mesh, overrides: Sequence[Sequence] | None = None) -> tuple[tuple[str, Any], ...]:
  """DEFAULT_RULES with `overrides` [(logical, mesh_axes), ...] first, restricted to the mesh."""
  table = [tuple(r) for r in (overrides or [])] + list(DEFAULT_RULES)
  out, seen = [], set()
  for name, axes in table:
    if name in seen:
      continue
    seen.add(name)
    axes = tuple(axes) if isinstance(axes, list) else axes
    out.append((name, _mesh_axes_in(axes, mesh)))
  return tuple(out)


def _axis_size(mesh: Mesh, axes: Any) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


def fit_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Drops (trailing) mesh axes from dims they do not divide; size-1 axes are dropped too."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      out.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if mesh.shape[a] > 1)
    while axes and dim % _axis_size(mesh, axes):
      axes = axes[:-1]
    out.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
  return P(*out)


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.Partitioned)


def leaf_sharding(leaf: Any, mesh: Mesh, rules: Sequence) -> NamedSharding:
  """NamedSharding for one abstract leaf: a LogicallyPartitioned box or a plain (replicated) array."""
  if isinstance(leaf, nn.LogicallyPartitioned):
    shape = leaf.value.shape
    spec = nn.logical_to_mesh_axes(leaf.names, rules)
  elif isinstance(leaf, nn.Partitioned):  # already mesh axis names
    shape, spec = leaf.value.shape, P(*leaf.names)
  else:
    shape, spec = np.shape(leaf), P()
  return NamedSharding(mesh, fit_spec(spec, shape, mesh))


def tree_shardings(abstract: Any, mesh: Mesh, rules: Sequence) -> Any:
  """A NamedSharding per leaf of `abstract` (boxed or not); the result has the unboxed structure."""
  return jax.tree.map(lambda x: leaf_sharding(x, mesh, rules), abstract, is_leaf=_is_box)


def sharded_init(fn: Callable[..., Any], mesh: Mesh, rules: Sequence, *args: Any) -> tuple[Any, Any]:
  """Runs `fn(*args)` under jit with out_shardings from its logical names: (unboxed tree, shardings).

  Nothing is materialised on one device first, so parameters and optimizer state larger than
  one device's memory are created already split.
  """
  abstract = jax.eval_shape(fn, *args)
  shardings = tree_shardings(abstract, mesh, rules)
  with activate(mesh, rules):
    tree = jax.jit(lambda *a: nn.unbox(fn(*a)), out_shardings=shardings)(*args)
  return tree, shardings


def put_on_mesh(tree: Any, shardings: Any) -> Any:
  """Host arrays (the same full copy on every process) -> global arrays with `shardings`.

  Each device reads only its own slice (`make_array_from_callback`), so this also works when
  every host of a pod loaded the same checkpoint.
  """
  def put(x, sharding):
    if isinstance(x, jax.Array) and x.is_fully_addressable and len(jax.devices()) == len(jax.local_devices()):
      return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(put, tree, shardings)


def batch_spec(ndim: int, rules: Sequence) -> P:
  """[batch, ...] -> P(<mesh axes of "batch">, None, ...)."""
  return nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)


def batch_sharding(mesh: Mesh, ndim: int, rules: Sequence) -> NamedSharding:
  return NamedSharding(mesh, batch_spec(ndim, rules))


def batch_devices(mesh: Mesh, rules: Sequence) -> int:
  """How many ways the batch dimension is split (a global batch must divide by it)."""
  return _axis_size(mesh, batch_spec(1, rules)[0])


def put_batch(local_batch: Any, mesh: Mesh, rules: Sequence) -> Any:
  """This process's rows of every array ([local_batch, ...]) -> global arrays sharded on "batch".

  With one process the local batch is the global batch; with N processes each passes its own
  1/N of the rows (`jax.make_array_from_process_local_data`). They land on the global rows this
  process's devices hold, in order: rows p*B/N .. (p+1)*B/N (what `StepLoader` hands out) when the
  mesh axis that spans the processes comes first ("data" in the default mesh). A mesh whose
  first batch axis stays inside a process (e.g. [("fsdp", 2), ("data", 2)] over 2 hosts)
  interleaves the hosts' rows: same loss (a mean over rows), but not the same row order.
  """
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim, rules), x)

  return jax.tree.map(put, local_batch)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Sequence) -> Iterator[None]:
  """Mesh and logical rules in context: `nn.with_logical_constraint` inside models takes effect."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
