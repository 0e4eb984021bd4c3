"""harness/store/db.py: transaction() commits or rolls back as a whole; latest_matrix() picks the last run matrix."""

import duckdb
import pytest

from harness import store


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
