"""Helpers shared by several test modules: rows for curation steps, results-database reads, CLI error checks."""

import sys
import threading
from pathlib import Path

from typer.testing import CliRunner

from harness import store
from harness.cli import app
from harness.data import curate

from conftest import CI_MATRIX

CTX = curate.Context(seed=0, sizes={})  # a step's context with no results folder, no models, no other arms
cli = CliRunner()


def row(i, prompt, response, **kw) -> dict:
    return {"id": f"r{i}", "prompt": prompt, "response": response, **kw}


def arith(i, a, b, response) -> dict:
    """A skills-world addition row whose response the verifier can check."""
    return row(i, f"What is {a} + {b}?", response, skill="arith", op="add", params=[a, b])


def commands() -> dict[str, str | None]:
    """'matrix plan' -> its help text, for every command and sub-command."""
    out = {c.name: c.callback.__doc__ for c in app.registered_commands}
    for group in app.registered_groups:
        out |= {f"{group.name} {c.name}": c.callback.__doc__ for c in group.typer_instance.registered_commands}
    return out


def one_line_error(res) -> str:
    """The CLI's answer to a bad input: exit code 2 and exactly one line (the message), which is returned."""
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert res.exit_code == 2 and len(lines) == 1, (res.exit_code, res.output)
    return lines[0]


def scores(db: Path) -> list[tuple]:
    """Every sample's score with its run id and response: equal lists mean the same cells gave the same answers."""
    with store.reader(db) as con:
        return con.execute("SELECT run_id, task, doc_id, response, score FROM samples ORDER BY ALL").fetchall()


def run_without_extra(monkeypatch, tmp_path: Path, module: str, executor: str) -> str:
    """`matrix run --executor <executor>` where `import <module>` fails, as where the extra is not installed: its
    one-line error."""
    monkeypatch.setitem(sys.modules, module, None)
    res = cli.invoke(app, ["matrix", "run", str(CI_MATRIX), "--executor", executor, "--results", str(tmp_path)])
    return one_line_error(res)


def run_matrix_while(action, results: Path, executor: str):
    """`matrix run` of the CI matrix on `executor` while `action(results, hit)` runs in a thread (it kills or signals
    something mid-run and appends what it hit to the list `hit`); returns the CLI result and `hit`."""
    hit: list = []
    thread = threading.Thread(target=action, args=(results, hit))
    thread.start()
    try:
        res = cli.invoke(app, ["matrix", "run", str(CI_MATRIX), "--executor", executor, "--results", str(results)])
    finally:
        thread.join()
    return res, hit
