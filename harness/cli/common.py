"""What every command shares: the process environment (set before any library is imported), the consoles, the
common options, and the error, table and file-descriptor helpers."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from harness.models import set_worker_env  # light: no torch

set_worker_env()  # offline unless HARNESS_ONLINE=1
# the libraries' own bars ("Loading weights", "Writing model shards", "Generating test split") would interleave
# with the harness's progress lines; read at import, so set before any of them is imported (workers inherit it)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

# wide tables when piped (a terminal sets its own width)
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

ResultsOpt = typer.Option(Path(os.environ.get("HARNESS_RESULTS", "results")), "--results",
                          help="Folder for runs, data sets and the database (env HARNESS_RESULTS); built bases and "
                               "converted models live in the shared cache (env HARNESS_CACHE, default "
                               "~/.cache/harness).")
DbOpt = typer.Option(None, "--db", help="DuckDB file (env HARNESS_DB; default RESULTS/harness.duckdb).")
IncludeOpt = typer.Option([], "--include", help="A folder of your own lm-eval task YAMLs (repeatable; lm-eval's "
                                                "--include_path); task YAML paths work in task lists too.")


def fail(msg: str, code: int = 2) -> typer.Exit:
    from rich.markup import escape

    err.print(f"[red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)  # messages quote [brackets]
    return typer.Exit(code)


def db_path(db: Path | None, results: Path) -> Path:
    return Path(db or os.environ.get("HARNESS_DB") or results / "harness.duckdb")


def input_errors():
    """The errors that mean bad input (exit 2 with their one-line message), not a bug."""
    from harness.data.curate import RecipeError
    from harness.models import ModelError
    from harness.run.jobs import ExecutorError
    from harness.spec import SpecError

    return SpecError, ModelError, RecipeError, ExecutorError


@contextlib.contextmanager
def fd_to(fd: int, f):
    """Point a file descriptor (2: what C code and subprocesses such as git write to as well) at a file."""
    sys.stderr.flush()
    saved = os.dup(fd)
    os.dup2(f.fileno(), fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)
        os.close(saved)


def print_table(columns: list[str], rows: list[tuple], title: str | None = None, console: Console = out) -> None:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in r))
    console.print(table)
