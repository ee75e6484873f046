"""Random keys that depend only on (seed, document id, sample index, step).

A document's queries are a function of the seed and its id alone, never of which batch, which
position in the batch, which process or which device it landed on, so reruns with another
batch size or device count reproduce them.

  id_hash("MED-10")              -> stable uint32 (blake2b; Python's hash() is salted per process)
  prompt_keys(seed, hashes[B])   -> typed keys [B]            (traceable)
  sample_keys(prompt_keys, n)    -> typed keys [B * n]         row b*n + j is sample j of prompt b
  step_keys(row_keys, t)         -> typed keys [R] for decoding step t
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np


def id_hash(item_id: str) -> int:
  """Stable 32-bit hash of an id string (same on every machine, process and Python version)."""
  digest = hashlib.blake2b(str(item_id).encode("utf-8"), digest_size=4).digest()
  return int.from_bytes(digest, "little")


def id_hashes(item_ids: Iterable[str]) -> np.ndarray:
  """uint32[B] hashes of ids."""
  return np.asarray([id_hash(i) for i in item_ids], dtype=np.uint32)


def prompt_keys(seed: jax.Array | int, hashes: jax.Array) -> jax.Array:
  """seed: int scalar; hashes: uint32[B] -> typed keys [B]."""
  base = jax.random.key(jnp.asarray(seed, jnp.uint32))
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base, hashes.astype(jnp.uint32))


def sample_keys(keys: jax.Array, num_samples: int) -> jax.Array:
  """typed keys [B] -> [B * num_samples], prompt-major (row b * n + j = sample j of prompt b)."""
  idx = jnp.arange(num_samples, dtype=jnp.uint32)
  per = jax.vmap(lambda k: jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k, idx))(keys)
  return per.reshape((-1,))


def step_keys(row_keys: jax.Array, step: jax.Array | int) -> jax.Array:
  """typed keys [R] -> keys [R] for decoding step `step` (0 = first new token)."""
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, jnp.asarray(step, jnp.uint32))
