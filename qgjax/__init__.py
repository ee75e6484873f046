"""qgjax: synthetic search queries aligned with ranking objectives, in JAX/Flax."""

__version__ = "0.1.0"
