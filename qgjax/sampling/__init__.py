"""qgjax.sampling."""
