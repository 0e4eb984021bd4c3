"""The shared cache: expensive, content-addressed things every results folder reuses.

Built bases, converted models, embeddings and encoded (tokenized) data sets are named by a hash of what produced
them, so one copy serves every results folder: `HARNESS_CACHE` (default `$XDG_CACHE_HOME/harness`, i.e.
~/.cache/harness). Results folders keep what a run produced (runs, data sets, the database).

Two processes may want the same entry at once: `build_once` takes an exclusive `fcntl.flock` on a lock file next to
the entry, so one builds while the other waits and then finds it done; the entry appears by an atomic rename, so a
reader never sees half of one and a killed builder leaves only a temporary folder the next builder removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Callable, Iterator

from harness.core.atomic import atomic_file, remove


def root() -> Path:
    env = os.environ.get("HARNESS_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "harness"


def cache_dir(kind: str) -> Path:
    """The folder for one kind of entry (`bases`, `models`, `embeddings`, ...), created on first use."""
    path = root() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(entry: Path) -> Iterator[None]:
    """Hold an exclusive lock for `entry` (blocking until another holder releases it)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f".{entry.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_once(entry: Path, build: Callable[[Path], None], done: Callable[[Path], bool] = Path.exists) -> Path:
    """Return `entry`, first calling `build(tmp)` to write it into a temporary path (file or folder) that is then
    renamed into place, unless it is already `done`. Safe across processes: one builds, the others wait and reuse."""
    if done(entry):
        return entry
    with locked(entry):
        if done(entry):  # built by another process while this one waited
            return entry
        for stale in entry.parent.glob(f".{entry.name}.tmp-*"):  # a killed builder's (it held this lock)
            remove(stale)
        with atomic_file(entry) as tmp:  # replaces a leftover without the done marker
            build(tmp)
    return entry
