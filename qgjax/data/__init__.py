"""qgjax.data."""
