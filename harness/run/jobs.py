"""What the runner hands an executor (jobs) and what it gets back (events).

An executor runs jobs wherever it likes (subprocesses here, Ray actors, Slurm array tasks) and yields events in the
order they happen. It never touches the database: the runner is the one DuckDB writer, and it ingests a cell when its
`Finished` event arrives. A `Finished` event means the cell's folder is in place under results/runs/<id>/ (ok or
failed, written by the cell recipe), or, when `folder` is None, that the cell died without writing one (the runner
records it as failed with `error`).
"""

from __future__ import annotations

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
    """What the run summary reports about an executor: how many cells it ran at once, and its own overhead parts."""
    name: str
    slots: int = 0
    threads: int = 1
    parts: dict = field(default_factory=dict)


class Executor(Protocol):
    info: ExecutorInfo

    def run(self, jobs: list[Job], results: Path) -> Iterator[Event]:
        """Run every job once (retrying lost workers as the engine allows); yields a Finished event for each."""
        ...
