"""tinyllm.viz."""
