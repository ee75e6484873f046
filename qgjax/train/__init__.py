"""qgjax.train."""
