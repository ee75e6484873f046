"""qgjax.parallel."""
