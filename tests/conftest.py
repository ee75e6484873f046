"""Shared test setup: 8 simulated CPU devices, compiled fast (tests/xla_flags.py), unless the caller already
chose XLA flags."""

import os

from xla_flags import cpu_devices  # tests/ is on sys.path, as for tiny_lm

os.environ.setdefault("XLA_FLAGS", cpu_devices(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data():
  """Path to ../shared/data; skips the test when the folder is absent (CI on a bare clone)."""
  if not SHARED_DATA.is_dir():
    pytest.skip("../shared/data not present")
  return SHARED_DATA


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
  """After each test file: drop jax's compiled programs and tracing caches, and collect garbage. A
  pytest-xdist worker runs many files in one process; without this its memory only grows (one
  worker reached 9 GB and was OOM-killed on a 24 GB host when the suite shared it)."""
  yield
  import gc
  import sys

  if "jax" in sys.modules:
    sys.modules["jax"].clear_caches()
  gc.collect()
