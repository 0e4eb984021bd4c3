"""Atomic writes: a file or folder is written beside its target under a temporary name, then renamed into place, so a
reader (another process, another node sharing the folder) sees the old one or the new one, never half of one.

A temporary name is hidden and ends in `.tmp-<host>-<pid>`: no glob for finished files (`*.npz`, a run id) matches
it, clean-ups find a killed writer's leftovers with `.*.tmp-*`, and the pid says whose it is.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
from pathlib import Path
from typing import Iterator


def temp_path(target: Path) -> Path:
    """The temporary sibling this process writes `target` into."""
    return target.parent / f".{target.name}.tmp-{platform.node()}-{os.getpid()}"


def remove(path: Path) -> None:
    """Remove a file, link or folder; nothing there is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def move_into_place(tmp: Path, target: Path, keep_existing: bool = False) -> None:
    """Rename a written file or folder onto `target`. An old folder there (an earlier failed attempt) goes first, as a
    rename cannot replace a non-empty folder. keep_existing: for content-addressed folders, which another process may
    finish first; theirs is as good as ours, so it stays (and `tmp` is left for the caller to remove)."""
    if not keep_existing and (tmp.is_dir() or target.is_dir()):
        remove(target)
    try:
        os.replace(tmp, target)
    except OSError:  # with keep_existing: a non-empty folder is there already
        if not (keep_existing and target.is_dir()):
            raise


@contextlib.contextmanager
def atomic_file(path: Path, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path` (nothing there yet) for the block to write a file, or a folder, to; when
    the block succeeds it takes `path`'s place (see move_into_place), when it raises it is removed and `path` stays as
    it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    remove(tmp)  # left by a killed process that had this pid
    try:
        yield tmp
        move_into_place(tmp, path, keep_existing)
    finally:
        remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: Path, keep_existing: bool = False) -> Iterator[Path]:
    """`atomic_file` for a folder: the temporary path is created as an empty folder."""
    with atomic_file(path, keep_existing) as tmp:
        tmp.mkdir()
        yield tmp
