"""Helpers every stage shares: ids (stable hashes), atomic file writes, the offline environment, number formatting."""
