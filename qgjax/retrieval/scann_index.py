"""ScaNN approximate inner-product search: tree partitioning + asymmetric hashing + exact reorder.

Same interface as `ExactIndex`: `search(queries f32[Q, D], k) -> (scores f32[Q, k], rows int64[Q, k])`.

  params = ScannParams(num_leaves=1000, leaves_to_search=60, reorder=400)   # or from a config
  index = ScannIndex.build(corpus, params)
  scores, rows = index.search(queries, k=100)
  index.save("out/index")            # the directory is created first (ScaNN's serialize needs it)
  index = ScannIndex.load("out/index")

The three stages (ScaNN's builder): `tree` splits the corpus into `num_leaves` k-means
partitions and a query visits the `leaves_to_search` nearest; `score_ah` scores every point in
those leaves with `dims_per_block`-dimensional product-quantised codes (anisotropic loss with
`anisotropic_threshold` for MIPS); `reorder` rescores the best `reorder` candidates exactly in
f32 and returns the top k. Recall rises with `leaves_to_search` and `reorder`, speed falls.
`tools/bench_mining.py` measures the recall@100 / QPS trade-off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from typing import Any, Mapping

import numpy as np

from qgjax.config_checks import settings_from_config
from qgjax.data import storage
from qgjax.errors import ConfigError, InputError

PARAMS_FILE = "qgjax_scann.json"


@dataclasses.dataclass(frozen=True)
class ScannParams:
  """ScaNN settings. 0 means "pick from the corpus size" (`resolved(n)`)."""
  num_leaves: int = 0                   # k-means partitions; 0 -> about 2 * sqrt(N)
  leaves_to_search: int = 0             # partitions a query visits; 0 -> about 5% of the leaves
  training_sample_size: int = 250_000   # points used to train the tree and the codebooks
  dims_per_block: int = 2               # AH: dimensions per 16-centre codebook block
  anisotropic_threshold: float = 0.2    # AH: anisotropic quantisation threshold (MIPS); nan = plain
  hash_type: str = "lut16"              # AH lookup: "lut16" (SIMD) | "lut256"
  reorder: int = 0                      # candidates rescored exactly; 0 -> 4 * k_build
  k_build: int = 100                    # default neighbours per query
  spherical: bool = True                # spherical k-means (unit-norm data)
  threads: int = 0                      # search/training threads; 0 = all cores

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any] | None) -> ScannParams:
    return settings_from_config(cls, cfg, "ScaNN")

  def resolved(self, num_rows: int) -> ScannParams:
    """Fills the 0 ("auto") fields for a corpus of `num_rows` and clamps to what ScaNN accepts."""
    leaves = self.num_leaves or int(round(2 * math.sqrt(num_rows)))
    leaves = max(1, min(leaves, num_rows // 10 or 1))
    to_search = self.leaves_to_search or max(1, int(round(0.05 * leaves)))
    reorder = self.reorder or 4 * self.k_build
    if self.hash_type not in ("lut16", "lut256"):
      raise ConfigError(f"ScaNN hash_type must be lut16 or lut256, got {self.hash_type!r}")
    return dataclasses.replace(self, num_leaves=leaves, leaves_to_search=min(to_search, leaves),
                               reorder=max(reorder, self.k_build),
                               training_sample_size=min(self.training_sample_size, num_rows))


def _scann():
  try:
    import scann  # noqa: F401
    from scann.scann_ops.py import scann_ops_pybind
  except ImportError as e:  # pragma: no cover - scann is a core dependency
    raise ConfigError(f"ScaNN is not installed ({e}); pip install 'scann>=1.4.2' or use index.kind=exact") from None
  return scann_ops_pybind


def _repoint_assets(directory: str) -> None:
  """ScaNN's scann_assets.pbtxt names its files by the absolute paths they were serialised at; an
  index read from elsewhere (a moved directory, the local copy of a gs:// one) gets them pointed at
  `directory` (rewritten in place, only when they differ)."""
  import re

  path = os.path.join(directory, "scann_assets.pbtxt")
  if not os.path.isfile(path):
    return
  with open(path) as f:
    text = f.read()
  fixed = re.sub(r'asset_path: "[^"]*/([^"/]+)"',
                 lambda m: f'asset_path: "{os.path.join(os.path.abspath(directory), m.group(1))}"', text)
  if fixed != text:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.write(fixed)
    os.replace(tmp, path)


def vectors_digest(x: np.ndarray) -> str:
  """sha256 of f32[N, D] vectors (about 1 s per GB): a saved index is reused only for the same ones."""
  return hashlib.sha256(np.ascontiguousarray(x, np.float32).data).hexdigest()


class ScannIndex:
  """A built ScaNN searcher over corpus rows 0..N-1 (dot-product similarity)."""

  kind = "scann"

  def __init__(self, searcher, params: ScannParams, num_rows: int, dim: int, data_digest: str = ""):
    self._searcher = searcher
    self.params = params
    self.num_rows = num_rows
    self.dim = dim
    self.data_digest = data_digest   # of the vectors it was built over (`vectors_digest`); "" = unknown

  @classmethod
  def build(cls, corpus: np.ndarray, params: ScannParams | None = None) -> ScannIndex:
    """Trains and builds the searcher over corpus f32[N, D] (normalise first for cosine)."""
    ops = _scann()
    corpus = np.ascontiguousarray(corpus, dtype=np.float32)
    if corpus.ndim != 2 or corpus.shape[0] < 2:
      raise ValueError(f"ScaNN needs a corpus [N>=2, D], got shape {corpus.shape}")
    p = (params or ScannParams()).resolved(corpus.shape[0])
    builder = ops.builder(corpus, p.k_build, "dot_product")
    builder = builder.tree(num_leaves=p.num_leaves, num_leaves_to_search=p.leaves_to_search,
                           training_sample_size=p.training_sample_size, spherical=p.spherical)
    builder = builder.score_ah(p.dims_per_block, anisotropic_quantization_threshold=p.anisotropic_threshold,
                               training_sample_size=p.training_sample_size, hash_type=p.hash_type)
    builder = builder.reorder(p.reorder)
    if p.threads:
      builder = builder.set_n_training_threads(p.threads)
    searcher = builder.build()
    if p.threads:
      searcher.set_num_threads(p.threads)
    return cls(searcher, p, corpus.shape[0], corpus.shape[1])

  def search(self, queries, k: int, *, leaves_to_search: int | None = None, reorder: int | None = None,
             batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """queries f32[Q, D] -> (scores np.float32[Q, k], rows np.int64[Q, k]), best first.

    `leaves_to_search` / `reorder` override the built settings for this call. Rows ScaNN could
    not fill (k above what the visited leaves hold) are -1 with score -inf.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != self.dim:
      raise ValueError(f"queries must be [Q, {self.dim}], got shape {queries.shape}")
    k = int(min(k, self.num_rows))
    if queries.shape[0] == 0:
      return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    pre = max(reorder if reorder is not None else self.params.reorder, k)
    rows, scores = self._searcher.search_batched_parallel(
        queries, final_num_neighbors=k, pre_reorder_num_neighbors=pre,
        leaves_to_search=leaves_to_search, batch_size=batch_size)
    rows = np.asarray(rows, np.int64)
    scores = np.asarray(scores, np.float32)
    if rows.shape[1] < k:  # fewer candidates than k: pad
      pad = k - rows.shape[1]
      rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
      scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return scores, rows

  def save(self, directory: str | os.PathLike) -> str:
    """Serialises the searcher and its settings into `directory` (created if absent; a gs:// URL:
    serialised into a local temp dir, then uploaded with its settings file last)."""
    if storage.is_remote(directory):
      with tempfile.TemporaryDirectory(prefix="qgjax-scann-") as tmp:
        self.save(tmp)
        storage.upload_dir(tmp, directory, PARAMS_FILE)
      return os.fspath(directory)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)  # ScaNN's serialize() does not create it
    if os.path.exists(os.path.join(directory, PARAMS_FILE)):
      os.remove(os.path.join(directory, PARAMS_FILE))   # an older index there is no longer complete
    self._searcher.serialize(directory)
    meta = {"params": dataclasses.asdict(self.params), "num_rows": self.num_rows, "dim": self.dim,
            "data_sha256": self.data_digest}
    tmp = os.path.join(directory, PARAMS_FILE + ".tmp")
    with open(tmp, "w") as f:
      json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(directory, PARAMS_FILE))  # written last: marks the index complete
    return directory

  @classmethod
  def load(cls, directory: str | os.PathLike) -> ScannIndex:
    """A saved index (a gs:// one through its local copy, keyed by its settings file's generation)."""
    if storage.is_remote(directory):
      if not cls.is_saved(directory):
        raise InputError("not a saved ScaNN index (no qgjax_scann.json)", path=os.fspath(directory))
      directory = storage.local_copy(directory, PARAMS_FILE)
    directory = os.fspath(directory)
    meta_path = os.path.join(directory, PARAMS_FILE)
    if not os.path.isfile(meta_path):
      raise InputError("not a saved ScaNN index (no qgjax_scann.json)", path=directory)
    with open(meta_path) as f:
      meta = json.load(f)
    _repoint_assets(directory)
    searcher = _scann().load_searcher(directory)
    return cls(searcher, ScannParams(**meta["params"]), int(meta["num_rows"]), int(meta["dim"]),
               str(meta.get("data_sha256", "")))

  @staticmethod
  def is_saved(directory: str | os.PathLike) -> bool:
    return (storage.as_path(directory) / PARAMS_FILE).is_file()
