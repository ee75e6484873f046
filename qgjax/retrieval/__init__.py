"""qgjax.retrieval."""
