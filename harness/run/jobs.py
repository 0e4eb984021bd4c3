"""What the runner hands an executor (jobs) and what it gets back (events).

An executor runs jobs wherever it likes (subprocesses here, Ray actors, Slurm array tasks) and yields events in the
order they happen. It never touches the database: the runner is the one DuckDB writer, and it ingests a cell when its
`Finished` event arrives. A `Finished` event means the cell's folder is in place under results/runs/<id>/ (ok or
failed, written by the cell recipe), or, when `folder` is None, that the cell died without writing one (the runner
records it as failed with `error`).
"""

from __future__ import annotations

import io
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol


class ExecutorError(RuntimeError):
    """An executor cannot run here (its engine is not installed, the results folder is not shared...): one line."""


@dataclass(frozen=True)
class Job:
    id: str
    kind: str  # 'sft' (train and evaluate a cell) or 'base' (evaluate the untrained model)
    config: dict  # the cell's resolved config (Cell.config() / BaseEval.config()); its id is a hash of it
    label: str  # for people: "full/curated/s0", "base tiny"
    lr: float | None  # sft only
    threads: int  # torch threads of the process that runs it
    harness_version: str


@dataclass(frozen=True)
class Started:
    job: Job
    worker: str  # where it runs, for the progress view ("worker 0", "ray 10.0.0.5 pid 123", "slurm 4242_3")


@dataclass(frozen=True)
class Step:
    job: Job
    step: int
    total: int
    loss: float


@dataclass(frozen=True)
class Evaluating:
    job: Job


@dataclass(frozen=True)
class Finished:
    job: Job
    status: str  # 'ok' | 'failed'
    error: str | None
    folder: Path | None  # results/runs/<id>; None when the cell died before writing it


@dataclass(frozen=True)
class Note:
    """Something the user should see that is not a cell's progress (a retry, a lost node)."""
    text: str


Event = Started | Step | Evaluating | Finished | Note


@dataclass
class ExecutorInfo:
    """What the run summary reports about an executor: how many cells it ran at once, its own overhead parts, and
    the capacity lost with workers that died (a lost node, a preempted task): the work they had done on cells that
    then ran again, and the time their slots stood empty, in wall seconds (divided by the slots). `loggers`: the
    engine's Python loggers; an executor with any has its engine's own output kept in RESULTS/logs/<name>.log."""
    name: str
    slots: int = 0
    threads: int = 1
    parts: dict = field(default_factory=dict)
    lost_seconds: float = 0.0
    loggers: tuple[str, ...] = ()


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # an in-memory stream (a test's CliRunner)
        return None


@contextmanager
def engine_output(log: Path, loggers: tuple[str, ...], console):
    """What an engine prints for itself goes to `log`, not to the user: its Python loggers, sys.stdout and
    sys.stderr (where Ray's driver prints a dead node's raylet log with its [state-dump] lines, and forwarded worker
    output) and file descriptors 1 and 2 (the engine's subprocesses, such as sacct's "Slurm accounting storage is
    disabled"). The rich `console` (the progress view) keeps writing to the user, through a copy of fd 2 when that is
    where it wrote. Enter it inside a rich Live display: Live's own redirection would print the engine's lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # the console's own setting (None: whatever sys.stderr is), restored after: pinning the stream it showed would
    # leave a long-lived console (the CLI's) writing to a stream that is gone
    old, shown, setting = (sys.stdout, sys.stderr), console.file, console._file
    kept = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate) for name in loggers}
    with log.open("a", buffering=1) as f:
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        user = os.fdopen(os.dup(saved[2]), "w", buffering=1) if _fileno(shown) == 2 else None
        try:
            for fd in (1, 2):
                os.dup2(f.fileno(), fd)
            sys.stdout = sys.stderr = f
            console.file = user or shown
            for name in loggers:
                logging.getLogger(name).handlers = [logging.StreamHandler(f)]
                logging.getLogger(name).propagate = False
            yield
        finally:
            console.file = setting
            sys.stdout, sys.stderr = old
            for fd in (1, 2):
                os.dup2(saved[fd], fd)
                os.close(saved[fd])
            if user:
                user.close()
            for name, (handlers, propagate) in kept.items():
                logging.getLogger(name).handlers = handlers
                logging.getLogger(name).propagate = propagate


class Executor(Protocol):
    info: ExecutorInfo

    def run(self, jobs: list[Job], results: Path) -> Iterator[Event]:
        """Run every job once (retrying lost workers as the engine allows); yields a Finished event for each."""
        ...
