"""Exact maximum-inner-product search: jitted matmul + `lax.top_k` per corpus chunk, merged.

The corpus lives on device as `[num_chunks, chunk, D]`; queries go through in blocks of
`query_block`. For each query block a `lax.scan` over the chunks keeps a running top-k
(`[query_block, k]` scores and row ids): chunk scores `q @ chunk.T` -> the chunk's top-k ->
merged with the running top-k by one more `top_k` over `2k` candidates. So at most
`query_block x chunk` scores exist at once: 100k x 100k never sits in memory.

Ties are deterministic: equal scores come out in ascending corpus row order (`lax.top_k` puts
the lower index first, and the running top-k, which holds lower rows, is merged first).
With several devices the corpus rows are split over them (`shard_map`), each device keeps its
own top-k with global row ids, and the per-device lists are merged the same way.

  index = ExactIndex(corpus_f32_NxD)                       # or ExactIndex(corpus, devices=jax.devices())
  scores, rows = index.search(queries_f32_QxD, k=100)      # np.float32[Q, k], np.int64[Q, k]
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

_PRECISIONS = {"highest": lax.Precision.HIGHEST, "high": lax.Precision.HIGH, "default": lax.Precision.DEFAULT}


def _chunk_topk(q: jax.Array, corpus: jax.Array, n_valid: jax.Array, row_offset: jax.Array, k: int,
                precision) -> tuple[jax.Array, jax.Array]:
  """q f32[Bq, D], corpus f32[C, S, D] -> running top-k over all C*S rows: (f32[Bq, k], int32[Bq, k]).

  Rows >= n_valid (padding) score -inf. Returned ids are `row_offset + local row`.
  """
  num_chunks, chunk, _ = corpus.shape
  bq = q.shape[0]
  kk = min(k, chunk)

  def step(carry, inputs):
    best_s, best_i = carry
    block, c = inputs
    s = jnp.einsum("qd,nd->qn", q, block, precision=precision, preferred_element_type=jnp.float32)
    local = c * chunk + jnp.arange(chunk, dtype=jnp.int32)
    s = jnp.where((local < n_valid)[None, :], s, -jnp.inf)
    cs, ci = lax.top_k(s, kk)
    # Running list first: on equal scores top_k keeps the lower index, i.e. the lower corpus row.
    all_s = jnp.concatenate([best_s, cs], axis=1)
    all_i = jnp.concatenate([best_i, ci + c * chunk + row_offset], axis=1)
    top_s, pos = lax.top_k(all_s, k)
    return (top_s, jnp.take_along_axis(all_i, pos, axis=1)), None

  init = (jnp.full((bq, k), -jnp.inf, jnp.float32), jnp.full((bq, k), -1, jnp.int32))
  (scores, ids), _ = lax.scan(step, init, (corpus, jnp.arange(num_chunks, dtype=jnp.int32)))
  return scores, ids


@functools.partial(jax.jit, static_argnames=("k", "query_block", "precision"))
def search_chunked(queries: jax.Array, corpus: jax.Array, n_valid: jax.Array, *, k: int,
                   query_block: int, precision: str = "highest") -> tuple[jax.Array, jax.Array]:
  """queries f32[Q, D] (Q a multiple of query_block), corpus f32[C, S, D] -> (f32[Q, k], int32[Q, k])."""
  prec = _PRECISIONS[precision]
  blocks = queries.reshape(-1, query_block, queries.shape[-1])
  fn = lambda qb: _chunk_topk(qb, corpus, n_valid, jnp.int32(0), k, prec)
  scores, ids = lax.map(fn, blocks)
  return scores.reshape(-1, k), ids.reshape(-1, k)


def _merge_device_lists(scores: jax.Array, ids: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """[ndev, Q, k] per-device lists (device order = row order) -> the global top-k [Q, k]."""
  ndev, q, _ = scores.shape
  flat_s = jnp.moveaxis(scores, 0, 1).reshape(q, ndev * k)
  flat_i = jnp.moveaxis(ids, 0, 1).reshape(q, ndev * k)
  top_s, pos = lax.top_k(flat_s, k)
  return top_s, jnp.take_along_axis(flat_i, pos, axis=1)


@functools.lru_cache(maxsize=16)
def _sharded_search_fn(mesh: Mesh, k: int, query_block: int, precision: str, rows_per_device: int):
  prec = _PRECISIONS[precision]

  def local(queries, corpus, n_valid):
    # corpus: this device's [C_local, S, D]; its first global row is axis_index * rows_per_device.
    offset = lax.axis_index("rows").astype(jnp.int32) * rows_per_device
    local_valid = jnp.clip(n_valid - offset, 0, rows_per_device)
    blocks = queries.reshape(-1, query_block, queries.shape[-1])
    s, i = lax.map(lambda qb: _chunk_topk(qb, corpus, local_valid, offset, k, prec), blocks)
    s, i = s.reshape(-1, k), i.reshape(-1, k)
    all_s = lax.all_gather(s, "rows")   # [ndev, Q, k]
    all_i = lax.all_gather(i, "rows")
    return _merge_device_lists(all_s, all_i, k)

  fn = jax.shard_map(local, mesh=mesh, in_specs=(P(), P("rows"), P()), out_specs=(P(), P()),
                     check_vma=False)
  return jax.jit(fn)


class ExactIndex:
  """Exact top-k inner-product search over a fixed corpus (the recall reference for ScaNN).

  Args:
    corpus: f32[N, D] (numpy or jax); normalise it first for cosine similarity.
    corpus_chunk: rows scored at once per query block (memory: query_block * corpus_chunk f32).
    query_block: queries per block (queries are padded to a multiple of it).
    devices: split corpus rows over these devices (default: this process's first device).
    precision: matmul precision, "highest" (exact f32; default) | "high" | "default".
  """

  kind = "exact"

  def __init__(self, corpus, *, corpus_chunk: int = 16384, query_block: int = 256,
               devices: Sequence[jax.Device] | None = None, precision: str = "highest"):
    if precision not in _PRECISIONS:
      raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
    corpus = np.asarray(corpus, dtype=np.float32) if not isinstance(corpus, jax.Array) else corpus
    if corpus.ndim != 2 or corpus.shape[0] == 0:
      raise ValueError(f"corpus must be [N>0, D], got shape {tuple(corpus.shape)}")
    self.num_rows, self.dim = int(corpus.shape[0]), int(corpus.shape[1])
    self.devices = list(devices) if devices else [jax.local_devices()[0]]
    ndev = len(self.devices)
    per_device = math.ceil(self.num_rows / ndev)
    self.chunk = int(min(corpus_chunk, max(per_device, 1)))
    chunks_per_device = math.ceil(per_device / self.chunk)
    self.rows_per_device = chunks_per_device * self.chunk
    total = self.rows_per_device * ndev
    padded = jnp.zeros((total, self.dim), jnp.float32).at[: self.num_rows].set(jnp.asarray(corpus, jnp.float32)) \
        if total != self.num_rows else jnp.asarray(corpus, jnp.float32)
    padded = padded.reshape(ndev * chunks_per_device, self.chunk, self.dim)
    self.query_block = int(query_block)
    self.precision = precision
    if ndev == 1:
      self.mesh = None
      self._corpus = jax.device_put(padded, self.devices[0])
    else:
      self.mesh = Mesh(np.asarray(self.devices, dtype=object), ("rows",))
      self._corpus = jax.device_put(padded, NamedSharding(self.mesh, P("rows")))
    self._n_valid = jnp.int32(self.num_rows)

  def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
    """queries f32[Q, D] -> (scores np.float32[Q, k], rows np.int64[Q, k]), best first.

    k larger than the corpus is cut to N.
    """
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != self.dim:
      raise ValueError(f"queries must be [Q, {self.dim}], got shape {queries.shape}")
    k = int(min(k, self.num_rows))
    if k < 1:
      raise ValueError("k must be >= 1")
    nq = queries.shape[0]
    if nq == 0:
      return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    qb = min(self.query_block, _round_up(nq, 8))
    padded = np.zeros((_round_up(nq, qb), self.dim), np.float32)
    padded[:nq] = queries
    if self.mesh is None:
      q = jax.device_put(padded, self.devices[0])
      scores, ids = search_chunked(q, self._corpus, self._n_valid, k=k, query_block=qb, precision=self.precision)
    else:
      fn = _sharded_search_fn(self.mesh, k, qb, self.precision, self.rows_per_device)
      scores, ids = fn(jax.device_put(padded, NamedSharding(self.mesh, P())), self._corpus, self._n_valid)
    scores, ids = jax.device_get((scores, ids))
    return np.asarray(scores[:nq], np.float32), np.asarray(ids[:nq], np.int64)


def _round_up(x: int, m: int) -> int:
  return (x + m - 1) // m * m


def brute_force_numpy(queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Reference: full score matrix in numpy (f64), stable sort by (-score, row). Small inputs only."""
  s = np.asarray(queries, np.float64) @ np.asarray(corpus, np.float64).T
  order = np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), -s), axis=1)[:, :k]
  return np.take_along_axis(s, order, axis=1).astype(np.float32), order.astype(np.int64)
