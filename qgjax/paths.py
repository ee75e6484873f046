"""qgjax's own directories on this machine."""

from __future__ import annotations

import os


def cache_root() -> str:
  """qgjax's cache directory: $QGJAX_CACHE_DIR, else ~/.cache/qgjax (tokenizers, XLA programs)."""
  return os.environ.get("QGJAX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "qgjax")
