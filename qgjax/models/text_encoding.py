"""Batched, length-bucketed, jitted inference for encoders: texts -> embeddings, pairs -> scores.

Texts are tokenised once, sorted by length and packed into batches of a fixed `batch_size`
whose length is the smallest bucket that fits, so only `len(length_buckets)` shapes compile
(padding rows fill the last batch of a bucket). Each batch runs data-parallel over a ("data",)
mesh of every device of every process (`qgjax.parallel.data_parallel.RowParallel`: rows padded
to a multiple of the device count; every process passes the same texts and gets every output).
Results come back in input order as numpy.

  encode_texts(bi_encoder, params, tokenizer, texts, ...)        -> f32[N, D]
  score_pairs(cross_encoder, params, tokenizer, queries, docs)   -> f32[N, num_labels]
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

DEFAULT_BUCKETS = (32, 64, 128, 256, 512)


def bucket_lengths(max_len: int, length_buckets: Sequence[int]) -> list[int]:
  """Buckets capped at max_len (max_len itself is always the last bucket)."""
  return sorted({b for b in length_buckets if b < max_len} | {max_len})


def plan_batches(lengths: Sequence[int], batch_size: int, buckets: Sequence[int]) -> list[tuple[int, np.ndarray]]:
  """-> [(bucket_len, row indices (<= batch_size))] covering every row once, shortest first."""
  lengths = np.asarray(lengths)
  order = np.argsort(lengths, kind="stable")
  edges = np.asarray(buckets)
  which = np.searchsorted(edges, lengths[order], side="left")  # first bucket >= length
  plan = []
  for b in np.unique(which):
    rows = order[which == b]
    for start in range(0, len(rows), batch_size):
      plan.append((int(edges[b]), rows[start:start + batch_size]))
  return plan


@functools.lru_cache(maxsize=64)
def _row_parallel(module, mesh) -> Any:
  from qgjax.parallel.data_parallel import RowParallel

  def apply(params, tokens, mask, token_type_ids):
    return module.apply({"params": params}, tokens, mask, token_type_ids)
  return RowParallel(apply, mesh)


def jitted_apply(module, mesh=None) -> Any:
  """RowParallel(params, tokens, mask, token_type_ids) -> module output, one per (hashable) module
  and mesh (default: every device, `qgjax.parallel.data_parallel.data_mesh()`)."""
  from qgjax.parallel.data_parallel import data_mesh
  return _row_parallel(module, mesh if mesh is not None else data_mesh())


def _run(module, params, encoded: dict[str, list[list[int]]], pad_id: int, batch_size: int, max_len: int,
         length_buckets: Sequence[int], mesh, progress: bool, desc: str) -> np.ndarray:
  from qgjax.parallel.data_parallel import replicate
  ids = encoded["input_ids"]
  types = encoded.get("token_type_ids")
  n = len(ids)
  fn = jitted_apply(module, mesh)
  params = replicate(params, fn.mesh)  # a no-op for params placed at load
  plan = plan_batches([len(x) for x in ids], batch_size, bucket_lengths(max_len, length_buckets))
  outputs = []
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=n, desc=desc, unit="text")
  for length, rows in plan:
    tokens = np.full((batch_size, length), pad_id, np.int32)
    mask = np.zeros((batch_size, length), bool)
    tt = np.zeros((batch_size, length), np.int32) if types is not None else None
    for j, r in enumerate(rows):
      seq = ids[r][:length]
      tokens[j, :len(seq)] = seq
      mask[j, :len(seq)] = True
      if tt is not None:
        tt[j, :len(seq)] = types[r][:length]
    outputs.append((rows, fn.submit(params, tokens, mask, tt)))
    if bar is not None:
      bar.update(len(rows))
  if bar is not None:
    bar.close()
  result = None
  for rows, pending in outputs:
    out = np.asarray(fn.fetch(pending), np.float32)
    if result is None:
      result = np.zeros((n,) + out.shape[1:], np.float32)
    result[rows] = out[:len(rows)]
  return result


def encode_texts(module, params, tokenizer, texts: Sequence[str], batch_size: int = 64, max_len: int = 256,
                 length_buckets: Sequence[int] = DEFAULT_BUCKETS, *, mesh=None,
                 progress: bool = False) -> np.ndarray:
  """Embeds `texts` with a BiEncoder (or DecoderEncoder) -> np.float32[N, D] (input order).

  Texts are truncated to `max_len` tokens (special tokens included). `mesh`: the ("data",) mesh
  each [batch_size, L] batch is split over (default: every device).
  """
  texts = list(texts)
  if not texts:
    raise ValueError("encode_texts needs at least one text")
  enc = tokenizer(texts, truncation=True, max_length=max_len, padding=False, return_token_type_ids=False)
  return _run(module, params, {"input_ids": enc["input_ids"]}, tokenizer.pad_token_id, batch_size, max_len,
              length_buckets, mesh, progress, "encode")


def score_pairs(module, params, tokenizer, queries: Sequence[str], docs: Sequence[str], batch_size: int = 64,
                max_len: int = 512, length_buckets: Sequence[int] = DEFAULT_BUCKETS, *, mesh=None,
                progress: bool = False) -> np.ndarray:
  """Scores (query, doc) pairs with a CrossEncoder -> np.float32[N, num_labels] (input order).

  Pairs are tokenised as `[CLS] q [SEP] d [SEP]` (tokenizer's pair template, longest-first
  truncation to `max_len`, as sentence-transformers' CrossEncoder does). `mesh`: as `encode_texts`.
  """
  queries, docs = list(queries), list(docs)
  if len(queries) != len(docs) or not queries:
    raise ValueError(f"score_pairs needs as many queries as docs (>0); got {len(queries)} and {len(docs)}")
  enc = tokenizer(queries, docs, truncation=True, max_length=max_len, padding=False)
  encoded = {"input_ids": enc["input_ids"]}
  if "token_type_ids" in enc:
    encoded["token_type_ids"] = enc["token_type_ids"]
  return _run(module, params, encoded, tokenizer.pad_token_id, batch_size, max_len, length_buckets, mesh,
              progress, "score")
