"""qgjax.jobs."""
