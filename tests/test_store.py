"""The results database (harness.store.db): migrations in order and once; ingest of a cell folder that replaces
the run's rows as a whole or not at all (the cell folder is made by hand: no model, no matrix run); transaction()
and latest_matrix()."""

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import harness.store.db
from harness import store

TABLES = ("runs", "train_steps", "evals", "samples", "matrix_cells")


def cell_folder(root: Path, run_id: str = "0123456789ab", n_samples: int = 3) -> Path:
    """A finished cell's artefacts as a cell writes them: result.json and one parquet file per table."""
    folder = root / "runs" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps({
        "run_id": run_id, "kind": "sft", "model": "micro", "method": "lora", "arm": "curated", "seed": 0,
        "status": "ok", "config": {"lr": 1e-3}, "env": {"python": "3"}, "steps": 2}))
    pq.write_table(pa.table({"step": [1, 2], "loss": [2.0, 1.5], "lr": [1e-3, 5e-4], "tokens": [10, 10],
                             "label_tokens": [4, 4], "seconds": [0.1, 0.1]}), folder / "train_steps.parquet")
    pq.write_table(pa.table({"task": ["skills_arith"], "task_group": ["learn"], "metric": ["exact_match"],
                             "value": [0.5], "stderr": [0.1], "n": [n_samples], "higher_is_better": [True],
                             "is_primary": [True]}), folder / "evals.parquet")
    pq.write_table(pa.table({"task": ["skills_arith"] * n_samples, "task_group": ["learn"] * n_samples,
                             "doc_id": list(range(n_samples)), "prompt": ["q"] * n_samples,
                             "target": ["a"] * n_samples, "response": ["a"] * n_samples,
                             "score": [1.0] * n_samples, "metrics": ["{}"] * n_samples}), folder / "samples.parquet")
    return folder


def counts(con) -> list[int]:
    return [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES]


def migrations(db: Path) -> list[tuple]:
    with store.reader(db) as con:
        return con.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version").fetchall()


def test_migrations_apply_in_order_and_once(tmp_path):
    db = tmp_path / "harness.duckdb"
    with store.writer(db) as con:
        assert store.migrate(con) == len(store.MIGRATIONS)  # a second migrate on an open connection: nothing to do
    applied = migrations(db)
    assert [(v, name) for v, name, _ in applied] == [(i, n) for i, (n, _) in enumerate(store.MIGRATIONS, start=1)]
    with store.writer(db):
        pass
    assert migrations(db) == applied  # reopened: nothing applied again (same rows, same times)


def test_an_older_database_is_migrated_forward_keeping_its_rows(tmp_path, monkeypatch):
    db = tmp_path / "harness.duckdb"
    monkeypatch.setattr(harness.store.db, "MIGRATIONS", store.MIGRATIONS[:1])  # a database from the first release
    with store.writer(db) as con:
        con.execute("INSERT INTO runs (run_id, kind, status) VALUES ('old', 'sft', 'ok')")
    assert [v for v, _, _ in migrations(db)] == [1]
    monkeypatch.undo()
    with store.writer(db) as con:
        assert con.execute("SELECT run_id FROM runs").fetchall() == [("old",)]
        assert "executor" in {c for (c,) in con.execute(  # a column added by the last migration
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'matrix_runs'").fetchall()}
    assert [v for v, _, _ in migrations(db)] == list(range(1, len(store.MIGRATIONS) + 1))


def test_ingesting_a_cell_twice_changes_nothing_and_a_new_copy_replaces_the_old(tmp_path):
    folder = cell_folder(tmp_path)
    with store.writer(tmp_path / "harness.duckdb") as con:
        store.ingest_run(con, folder, "m")
        first = counts(con)
        assert first == [1, 2, 1, 3, 1]
        store.ingest_run(con, folder, "m")
        assert counts(con) == first
        cell_folder(tmp_path, n_samples=2)  # the cell rerun with fewer samples: its rows replace the old ones
        store.ingest_run(con, folder, "m")
        assert counts(con) == [1, 2, 1, 2, 1]
        assert con.execute("SELECT config->>'lr', status FROM runs").fetchone() == ("0.001", "ok")


def test_an_ingest_that_fails_leaves_the_previous_rows(tmp_path):
    folder = cell_folder(tmp_path)
    with store.writer(tmp_path / "harness.duckdb") as con:
        store.ingest_run(con, folder, "m")
        before = con.execute("SELECT * FROM samples ORDER BY doc_id").fetchall()
        result = json.loads((folder / "result.json").read_text())
        (folder / "result.json").write_text(json.dumps({**result, "status": "failed"}))
        pq.write_table(pq.read_table(folder / "train_steps.parquet").slice(0, 1), folder / "train_steps.parquet")
        (folder / "evals.parquet").write_bytes(b"not parquet")  # fails after runs and train_steps were replaced
        with pytest.raises(Exception):
            store.ingest_run(con, folder, "other")
        assert counts(con) == [1, 2, 1, 3, 1]
        assert con.execute("SELECT status FROM runs").fetchall() == [("ok",)]
        assert con.execute("SELECT * FROM samples ORDER BY doc_id").fetchall() == before
        assert con.execute("SELECT matrix FROM matrix_cells").fetchall() == [("m",)]
        store.ingest_run(con, cell_folder(tmp_path, "fedcba987654"), "m")  # the connection is usable afterwards
        assert counts(con)[0] == 2


def test_a_reader_needs_an_existing_database(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results database at"):
        with store.reader(tmp_path / "missing.duckdb"):
            pass
    assert not (tmp_path / "missing.duckdb").exists()


def test_an_exception_inside_a_transaction_rolls_it_back_and_is_raised():
    con = duckdb.connect()
    con.execute("CREATE TABLE t (x INTEGER)")
    with store.transaction(con):
        con.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(KeyError), store.transaction(con):
        con.execute("INSERT INTO t VALUES (2)")
        raise KeyError("x")
    assert con.execute("SELECT x FROM t").fetchall() == [(1,)]
    with store.transaction(con):  # the connection is usable again: no transaction left open
        con.execute("INSERT INTO t VALUES (3)")
    assert con.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (3,)]


def test_latest_matrix_is_the_one_whose_trained_cells_finished_last():
    con = duckdb.connect()
    store.migrate(con)
    assert store.latest_matrix(con) is None
    for run_id, kind, finished in [("a", "sft", "2026-01-01"), ("b", "sft", "2026-01-03"), ("c", "base", "2026-01-05")]:
        con.execute("INSERT INTO runs (run_id, kind, status, finished_at) VALUES (?, ?, 'ok', ?)",
                    [run_id, kind, finished])
    con.execute("INSERT INTO matrix_cells VALUES ('old', 'a'), ('new', 'b'), ('eval', 'c')")
    assert store.matrices(con) == ["new", "old", "eval"]  # a matrix of trained cells before a base-only one
    assert store.latest_matrix(con) == "new"
