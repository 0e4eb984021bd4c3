"""Helpers every stage shares: ids (stable hashes), the shared cache, atomic writes (atomic), numbers as text (fmt)."""
