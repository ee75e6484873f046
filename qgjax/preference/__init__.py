"""qgjax.preference."""
