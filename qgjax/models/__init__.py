"""qgjax.models."""
