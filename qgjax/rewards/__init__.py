"""qgjax.rewards."""
