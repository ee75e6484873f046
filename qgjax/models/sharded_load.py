"""Decoder checkpoints placed straight onto a mesh, one slice per device, never as a full host copy.

  model, params, tokenizer = load_decoder("smollm2-135m-instruct", mesh=mesh, rules=rules)   # qgjax.models.registry
  params = place_decoder_params(open_source(path), config, mesh, rules)   # what it runs
  # params: global jax.Arrays, each in tree_shardings(abstract params, mesh, rules)

Each parameter is created with `jax.make_array_from_callback(shape, sharding, read)`, and `read`
fetches only the rows and columns of the HF tensors under the device's index:

  SafetensorsSource  byte ranges of the rows (read with pread, in blocks of <= 16 MiB), bf16 kept
  GGUFSource         the quantised rows of the tensor, and of them the quantisation blocks that hold
                     the columns, dequantised row block by row block (llama q/k rows un-permuted
                     by index), so no tensor is ever dequantised whole

Only addressable devices' callbacks run, so each process of a pod reads just its own slices.
Beyond the device buffers the host holds one row block at a time. Values are bitwise those of
`load_decoder` + `put_on_mesh` (same dequantisation, same cast to the param dtype).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Sequence

import jax
import numpy as np

from qgjax.errors import CheckpointMismatchError

BLOCK_BYTES = 16 * 1024**2  # largest row block read (or dequantised) at once

_SAFE_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _np_dtype(name: str) -> np.dtype:
  import ml_dtypes

  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _row_blocks(rows: np.ndarray, row_bytes: int) -> list[np.ndarray]:
  """Splits sorted-or-not row indices into runs of at most BLOCK_BYTES worth of rows."""
  per = max(1, BLOCK_BYTES // max(row_bytes, 1))
  return [rows[i:i + per] for i in range(0, len(rows), per)]


def _cut_columns(block: np.ndarray, cols: Any) -> np.ndarray:
  """block[:, cols] as its own array, so the (larger) row block it came from can be freed."""
  if block.ndim < 2 or cols == slice(None):
    return block
  return np.ascontiguousarray(block[:, cols])


def _as_rows(index: Any, n: int) -> np.ndarray:
  return np.arange(n)[index] if not isinstance(index, np.ndarray) else index


class SafetensorsSource:
  """The tensors of an HF safetensors checkpoint (dir, index or file), read by row ranges."""

  def __init__(self, path: str):
    from qgjax.models.hf_checkpoint import safetensors_files

    self.path = path
    self._entries: dict[str, tuple[str, int, np.dtype, tuple[int, ...]]] = {}
    for file in safetensors_files(path):
      with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
      for name, e in header.items():
        if name == "__metadata__":
          continue
        if e["dtype"] not in _SAFE_DTYPES:
          raise CheckpointMismatchError(f"{file}: tensor {name} has unsupported dtype {e['dtype']}")
        self._entries[name] = (file, 8 + n + int(e["data_offsets"][0]), _np_dtype(_SAFE_DTYPES[e["dtype"]]),
                               tuple(int(d) for d in e["shape"]))

  def shapes(self) -> dict[str, tuple[int, ...]]:
    return {name: e[3] for name, e in self._entries.items()}

  def read(self, name: str, rows: Any, cols: Any = slice(None)) -> np.ndarray:
    """tensor[rows][:, cols] (rows: slice or index array over dim 0; cols ignored for 1-D)."""
    file, offset, dtype, shape = self._entries[name]
    width = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    row_bytes = width * dtype.itemsize
    idx = _as_rows(rows, shape[0])
    parts = []
    with open(file, "rb") as f:
      fd = f.fileno()
      for block in _row_blocks(idx, row_bytes):
        if len(block) and np.all(np.diff(block) == 1):  # one contiguous byte range
          buf = os.pread(fd, len(block) * row_bytes, offset + int(block[0]) * row_bytes)
          x = np.frombuffer(buf, dtype).reshape((len(block),) + shape[1:])
        else:
          x = np.stack([np.frombuffer(os.pread(fd, row_bytes, offset + int(r) * row_bytes), dtype)
                        .reshape(shape[1:]) for r in block]) if len(block) else np.zeros((0,) + shape[1:], dtype)
        parts.append(_cut_columns(x, cols))
    return np.concatenate(parts) if len(parts) != 1 else parts[0]


class GGUFSource:
  """The HF-named tensors of a GGUF file (qgjax.models.gguf_loader names), dequantised by row blocks."""

  def __init__(self, path: str):
    from qgjax.models.gguf_loader import hf_config_from_gguf, hf_tensor_name, open_gguf, unpermute_qk

    self.path = path
    self.reader = open_gguf(path)
    self.hf_config = hf_config_from_gguf(self.reader, {t.name for t in self.reader.tensors})
    self._entries: dict[str, tuple[Any, tuple[int, ...], np.ndarray | None]] = {}
    for t in self.reader.tensors:
      shape = tuple(int(d) for d in reversed(t.shape.tolist()))
      name, qk_heads = hf_tensor_name(t.name, self.hf_config)
      perm = None if qk_heads is None else unpermute_qk(np.arange(shape[0]), qk_heads)  # HF row r = GGUF row perm[r]
      self._entries[name] = (t, shape, perm)

  def shapes(self) -> dict[str, tuple[int, ...]]:
    return {name: e[1] for name, e in self._entries.items()}

  def read(self, name: str, rows: Any, cols: Any = slice(None)) -> np.ndarray:
    """f32 tensor[rows][:, cols], dequantising only the rows asked for and, of those, only the
    quantisation blocks (32 or 256 values of a row, each with its own scale) that hold `cols`."""
    import gguf

    t, shape, perm = self._entries[name]
    idx = _as_rows(rows, shape[0])
    if perm is not None:
      idx = perm[idx]
    raw_cols, inner, width = slice(None), cols, int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    if len(shape) == 2 and isinstance(cols, slice) and cols.step in (None, 1) and cols != slice(None):
      c0, c1, _ = cols.indices(shape[1])
      if t.data.dtype == np.uint8:  # quantised (or bf16) rows stored as bytes: cut at block boundaries
        values, nbytes = gguf.GGML_QUANT_SIZES[t.tensor_type]
        b0, b1 = c0 // values, -(-c1 // values)
        raw_cols, inner, width = slice(b0 * nbytes, b1 * nbytes), slice(c0 - b0 * values, c1 - b0 * values), (b1 - b0) * values
      else:  # f32 / f16: typed columns
        raw_cols, inner, width = slice(c0, c1), slice(None), c1 - c0
    parts = []
    for block in _row_blocks(idx, width * 4):
      raw = t.data[block] if not (len(block) and np.all(np.diff(block) == 1)) else t.data[block[0]:block[-1] + 1]
      if len(shape) == 2:
        raw = raw[:, raw_cols]
      x = np.asarray(gguf.quants.dequantize(raw, t.tensor_type), dtype=np.float32)
      x = x.reshape((len(block), width) if len(shape) == 2 else (len(block),) + shape[1:])
      parts.append(_cut_columns(x, inner if len(shape) == 2 else slice(None)))
    return np.concatenate(parts) if len(parts) != 1 else parts[0]


def open_source(path: str) -> SafetensorsSource | GGUFSource:
  return GGUFSource(path) if path.endswith(".gguf") else SafetensorsSource(path)


def _read_param(source, names: tuple[str, ...], transposed: bool, stacked: bool, index: tuple, dtype) -> np.ndarray:
  """The slice `index` of one Flax param built from HF tensors `names` (see decoder_hf.hf_layout)."""
  def one(name, sub):
    if transposed:  # Flax [in, out][a, b] == HF [out, in][b, a].T
      return source.read(name, sub[1], sub[0]).T
    return source.read(name, sub[0], sub[1] if len(sub) > 1 else slice(None))

  if stacked:
    layers = range(len(names))[index[0]]
    x = np.stack([one(names[i], index[1:]) for i in layers])
  else:
    x = one(names[0], index)
  return np.ascontiguousarray(x.astype(dtype))


def place_decoder_params(source, config, mesh, rules: Sequence, *, check: bool = True) -> Any:
  """Every DecoderLM param of `config`, read from `source` straight into its NamedSharding on `mesh`."""
  import jax.numpy as jnp

  from qgjax.models.decoder import DecoderLM
  from qgjax.models.decoder_hf import IGNORED_HF_TENSORS, hf_layout, hf_tensor_shapes
  from qgjax.models.hf_checkpoint import check_fit, flatten_tree, unflatten_tree
  from qgjax.models.layers import as_dtype
  from qgjax.parallel.sharding import tree_shardings
  import flax.linen as nn

  if check:
    ignore = IGNORED_HF_TENSORS + (("lm_head.weight",) if config.tie_word_embeddings else ())
    shapes_only = {name: jax.ShapeDtypeStruct(shape, np.float32) for name, shape in source.shapes().items()}
    check_fit(hf_tensor_shapes(config), shapes_only, source.path, ignore_extra=ignore)
  abstract = jax.eval_shape(DecoderLM(config).init, jax.random.key(0), jnp.ones((1, 2), jnp.int32),
                            jnp.zeros((1, 2), jnp.int32))["params"]
  shardings = flatten_tree(tree_shardings(abstract, mesh, rules))
  shapes = flatten_tree(nn.unbox(abstract))
  layout = hf_layout(config)
  if set(layout) != set(shardings):
    raise CheckpointMismatchError(f"decoder params {sorted(set(shardings) ^ set(layout))} have no HF layout")
  pdt = as_dtype(config.param_dtype)
  flat = {}
  for path, (names, transposed) in layout.items():
    stacked = config.scan_layers and path.startswith("layers/")
    shape = tuple(shapes[path].shape)
    # Devices holding the same slice (replicated mesh axes) share one read, kept only until the
    # last of them has taken it.
    waiting: dict[str, int] = {}
    for index in shardings[path].addressable_devices_indices_map(shape).values():
      waiting[str(index)] = waiting.get(str(index), 0) + 1
    done: dict[str, np.ndarray] = {}

    def read(index, n=names, t=transposed, s=stacked, done=done, waiting=waiting):
      key = str(index)
      x = done.pop(key) if key in done else _read_param(source, n, t, s, index, pdt)
      waiting[key] -= 1
      if waiting[key] > 0:
        done[key] = x
      return x

    flat[path] = jax.make_array_from_callback(shape, shardings[path], read)
  return unflatten_tree(flat)
