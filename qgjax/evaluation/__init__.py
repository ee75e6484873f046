"""qgjax.evaluation."""
