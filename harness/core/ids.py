"""Stable ids: hashes that are the same on every machine and Python run."""

from __future__ import annotations

import hashlib


def stable_hash(*parts: object) -> int:
    """A hash that is the same on every machine and Python run (unlike hash())."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big")
