import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness import store
from harness.cli import app

from conftest import CI_MATRIX
from helpers import one_line_error

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def test_matrix_runs_end_to_end(ci_run):
    results, output = ci_run
    db = results / "harness.duckdb"
    assert "summary of ci" in output and str(db.resolve()) in output
    assert "verdicts: primary family: 8 comparisons" in " ".join(output.split())  # stated under the family
    with store.reader(db) as con:
        rows = con.execute("SELECT method, arm, seed, status, learn, forget FROM summary WHERE matrix = 'ci'").fetchall()
        assert sorted((r[0], r[1]) for r in rows) == [("base", None), ("full", "bulk"), ("full", "curated"),
                                                      ("lora", "bulk"), ("lora", "curated")]
        assert all(r[3] == "ok" and r[4] is not None for r in rows)
        steps = con.execute("SELECT run_id, count(*) FROM train_steps GROUP BY 1").fetchall()
        assert len(steps) == 4 and all(n == 4 for _, n in steps)
        # LoRA trains fewer parameters than full FT of the same model
        tp = dict(con.execute("SELECT method, max(trainable_params) FROM runs WHERE kind = 'sft' GROUP BY 1").fetchall())
        # every run records the chat template that rendered its prompts (the micro base's is the harness's plain one)
        assert con.execute("SELECT DISTINCT json_extract_string(env, '$.chat_template.source') FROM runs"
                           ).fetchall() == [("harness plain template",)]
        assert tp["lora"] < tp["full"]
        # provenance: the curated arm's steps and the examples they dropped
        n = con.execute("SELECT count(*) FROM data_decisions d JOIN datasets s USING (dataset_id)").fetchone()[0]
        assert n > 0
    lora = next((results / "runs").glob("*/adapter/adapter_config.json"))
    assert Path(json.loads(lora.read_text())["base_model_name_or_path"]).is_absolute()


def test_data_tests_on_the_results_database(ci_run):
    """dbt-style checks: keys unique and not null, no orphans, every finished run complete."""
    results, _ = ci_run
    with store.reader(results / "harness.duckdb") as con:
        q = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
        assert q("SELECT count(*) FROM (SELECT run_id, task, doc_id FROM samples GROUP BY ALL HAVING count(*) > 1)") == 0
        assert q("SELECT count(*) FROM samples WHERE run_id IS NULL OR task IS NULL OR doc_id IS NULL") == 0
        assert q("SELECT count(*) FROM matrix_cells WHERE run_id NOT IN (SELECT run_id FROM runs)") == 0
        assert q("SELECT count(*) FROM runs r WHERE status = 'ok' AND NOT EXISTS "
                 "(SELECT 1 FROM evals e WHERE e.run_id = r.run_id)") == 0
        assert q("SELECT count(*) FROM runs WHERE kind = 'sft' AND base_run_id NOT IN (SELECT run_id FROM runs)") == 0
        assert q("SELECT max(version) FROM schema_migrations") == len(store.MIGRATIONS)


def test_ingest_is_idempotent(ci_run, tmp_path):
    results, _ = ci_run
    db = tmp_path / "copy.duckdb"
    run_dirs = [d for d in (results / "runs").iterdir() if (d / "result.json").exists()]
    counts = []
    for _ in range(2):
        with store.writer(db) as con:
            for d in run_dirs:
                store.ingest_run(con, d, "ci")
            counts.append([con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                           for t in ("runs", "train_steps", "evals", "samples", "matrix_cells")])
    assert counts[0] == counts[1] and counts[0][0] == len(run_dirs)


def test_rerun_skips_finished_cells(ci_run):
    results, _ = ci_run
    t0 = time.perf_counter()
    res = runner.invoke(app, ["matrix", "run", str(CI_MATRIX), "--results", str(results)])
    assert res.exit_code == 0 and "all 5 cells of ci are finished" in res.output
    assert time.perf_counter() - t0 < 10


def test_an_edited_matrix_keeps_only_its_current_cells(ci_run, tmp_path):
    """Dropping a method from the matrix takes its cells out of the matrix's summary; their runs stay in `runs`."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(ci_run[0], results)
    edited = tmp_path / "ci.yaml"
    edited.write_text(CI_MATRIX.read_text().replace("  lora: {r: 4, alpha: 8}\n", ""))
    res = runner.invoke(app, ["matrix", "run", str(edited), "--results", str(results)])
    assert res.exit_code == 0 and "all 3 cells of ci are finished" in res.output, res.output
    with store.reader(results / "harness.duckdb") as con:
        assert sorted(con.execute("SELECT method FROM summary WHERE matrix = 'ci'").fetchall()) == [
            ("base",), ("full",), ("full",)]
        assert con.execute("SELECT count(*) FROM runs WHERE method = 'lora'").fetchone()[0] == 2


def test_readme_queries_run(ci_run):
    results, _ = ci_run
    readme = (ROOT / "README.md").read_text()
    queries = re.findall(r'^harness sql "(.*?)"', readme, flags=re.M | re.S)
    assert len(queries) >= 3
    for q in queries:
        res = runner.invoke(app, ["sql", q, "--results", str(results), "--format", "csv"])
        assert res.exit_code == 0, (q, res.output)
        assert len(res.output.splitlines()) >= 2, (q, res.output)  # a header and at least one row


def test_sql_formats_and_errors(ci_run):
    results, _ = ci_run
    res = runner.invoke(app, ["sql", "SELECT 1 AS x", "--results", str(results), "--format", "json"])
    assert json.loads(res.output) == [{"x": 1}]
    res = runner.invoke(app, ["sql", "DELETE FROM runs", "--results", str(results)])
    assert res.exit_code == 2 and "read-only" in res.output.lower()
    res = runner.invoke(app, ["sql", "SELECT nope FROM runs", "--results", str(results)])
    one_line_error(res)


def _finished(results: Path) -> list[Path]:
    return [p for p in (results / "runs").glob("*/result.json")]


@pytest.mark.slow
def test_resume_after_kill(results):
    """kill -9 the whole run after the first cell lands; the rerun finishes the rest and duplicates nothing."""
    cmd = [sys.executable, "-m", "harness.cli", "matrix", "run", str(CI_MATRIX), "--results", str(results),
           "--workers", "1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not _finished(results) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.parent.name: p.stat().st_mtime_ns for p in _finished(results)}
    assert 1 <= len(done_before) < 5, "the kill must land mid-matrix"
    res = runner.invoke(app, ["matrix", "run", str(CI_MATRIX), "--results", str(results)])
    assert res.exit_code == 0, res.output
    after = {p.parent.name: p.stat().st_mtime_ns for p in _finished(results)}
    assert len(after) == 5
    assert all(after[k] == v for k, v in done_before.items())  # finished work was kept, not redone
    assert not list((results / "runs").glob(".*"))  # no half-written folders left
    with store.reader(results / "harness.duckdb") as con:
        assert con.execute("SELECT count(*), count(DISTINCT run_id) FROM runs WHERE status = 'ok'").fetchone() == (5, 5)
        assert con.execute("SELECT count(*) FROM (SELECT run_id, step FROM train_steps GROUP BY ALL "
                           "HAVING count(*) > 1)").fetchone()[0] == 0


def test_every_finished_cell_has_its_costs(ci_run):
    results, _ = ci_run
    with store.reader(results / "harness.duckdb") as con:
        rows = con.execute("SELECT c.kind, c.method, c.hardware, c.peak_rss_bytes, c.device_hours, c.train_cost_usd, "
                           "c.train_flops, c.tokens_per_second, c.weights_bytes FROM costs c JOIN runs r USING (run_id) "
                           "WHERE r.status = 'ok'").fetchall()
    assert len(rows) == 5
    for kind, method, hw, rss, hours, usd, flops, tps, wbytes in rows:
        assert hw.startswith("cpu:") and rss > 50 * 2**20 and hours > 0 and usd > 0
        if kind == "sft":
            assert flops > 0 and tps > 0 and wbytes > 0
