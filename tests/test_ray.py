"""The Ray executor on a real two-node Ray cluster on loopback (ray.cluster_utils: each node its own raylet and
worker processes, 1 CPU each), compared with the local executor's run of the same matrix (the session's `ci_run`)."""

import os
import signal
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness import store
from harness.cli import app

from conftest import CI_MATRIX, fresh_results
from helpers import run_matrix_while, run_without_extra, scores

runner = CliRunner()
TABLES = ("runs", "train_steps", "evals", "samples", "matrix_cells")


@pytest.fixture(scope="module")
def cluster():
    """Two nodes of 1 CPU: the micro matrix runs one cell per node (~40 s to start under load, once per module)."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def _counts(db: Path) -> list[int]:
    with store.reader(db) as con:
        return [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES]


def test_ray_without_the_extra_is_one_line_exit_2(monkeypatch, tmp_path):
    assert "pip install -e '.[ray]'" in run_without_extra(monkeypatch, tmp_path, "ray", "ray")


@pytest.mark.slow
def test_ray_gives_the_local_run_ids_and_scores(cluster, ci_run, tmp_path):
    results = fresh_results(ci_run, tmp_path)
    res = runner.invoke(app, ["matrix", "run", str(CI_MATRIX), "--executor", "ray", "--results", str(results)])
    assert res.exit_code == 0, res.output
    assert "on the ray executor" in res.output and "cell 5/5" in res.output  # plain progress lines (not a terminal)
    local, here = ci_run[0] / "harness.duckdb", results / "harness.duckdb"
    assert scores(here) == scores(local)  # same run ids, responses and per-sample scores
    assert _counts(here) == _counts(local)
    with store.reader(here) as con:
        assert con.execute("SELECT executor, workers FROM matrix_runs").fetchall() == [("ray", 2)]


@pytest.mark.slow
def test_cells_come_back_through_the_object_store_without_a_shared_folder(cluster, ci_run, tmp_path):
    """An actor that does not see the results folder gets the base and data set through the object store and
    returns the cell folder; the driver puts it in place and it matches the local run's."""
    from harness.run.plan import jobs_for, plan
    from harness.run.ray import RayExecutor
    from harness.run.jobs import Finished
    from harness.spec import Run, load_matrix

    import pyarrow.parquet as pq

    results = fresh_results(ci_run, tmp_path)
    p = plan(load_matrix(CI_MATRIX))
    jobs = jobs_for(p, {p.bases[0].id, p.cells[0].id}, threads=1)
    events = list(RayExecutor(Run(executor="ray"), threads=1, share=False).run(jobs, results))
    done = [e for e in events if isinstance(e, Finished)]
    assert sorted(e.job.id for e in done) == sorted(j.id for j in jobs) and all(e.status == "ok" for e in done)
    for job in jobs:
        ours = pq.read_table(results / "runs" / job.id / "samples.parquet").to_pylist()
        assert ours == pq.read_table(ci_run[0] / "runs" / job.id / "samples.parquet").to_pylist()
    assert not list((results / "runs").glob(".*"))  # nothing half-written left behind


@pytest.mark.slow
def test_a_failing_task_reports_the_cells_error(cluster, ci_run, tmp_path):
    """A cell that raises outside the recipe's own error handling: its error, not Ray's traceback dump."""
    from harness.run.jobs import Finished, Job
    from harness.run.ray import RayExecutor
    from harness.spec import Run

    job = Job("0123456789ab", "sft", {"model": "micro", "model_fingerprint": "x"}, "broken", 1e-3, 1, "0")
    events = list(RayExecutor(Run(executor="ray"), threads=1).run([job], fresh_results(ci_run, tmp_path)))
    assert events[-1] == Finished(job, "failed", "KeyError: 'train'", None)


def _kill_first_cell_worker(results: Path, killed: list) -> None:
    """kill -9 the process of the first cell that is running (its folder names host and pid: .<id>.tmp-<host>-<pid>)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for tmp in (results / "runs").glob(".*.tmp-*"):
            pid = int(tmp.name.rsplit("-", 1)[1])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(pid)
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_the_rows_equal_a_clean_run(cluster, ci_run, tmp_path):
    results = fresh_results(ci_run, tmp_path)
    (results / "runs").mkdir()
    res, killed = run_matrix_while(_kill_first_cell_worker, results, "ray")
    assert killed and res.exit_code == 0, res.output
    assert "died" in res.output and "retry 1 of 2" in res.output
    assert _counts(results / "harness.duckdb") == _counts(ci_run[0] / "harness.duckdb")
    assert scores(results / "harness.duckdb") == scores(ci_run[0] / "harness.duckdb")


@pytest.mark.slow
def test_a_node_lost_mid_run_the_matrix_still_finishes(cluster, ci_run, tmp_path):
    """The second node's raylet is killed (kill -9) while the node runs a cell; its cell is retried on the head node.
    Ray's notice of the dead raylet, with its [state-dump] log, goes to results/logs/ray.log, not to the user; the
    summary reports the capacity lost with the node apart from the harness's overhead. Last in this module: the
    cluster is down to one node afterwards."""
    results = fresh_results(ci_run, tmp_path)
    (results / "runs").mkdir()
    worker_node = next(n for n in cluster.worker_nodes)
    raylet = worker_node.all_processes["raylet"][0].process.pid

    def kill_the_node_mid_cell(results: Path, killed: list) -> None:
        """kill -9 of the second node's raylet and of its worker running a cell (a worker's parent is its raylet)."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for tmp in (results / "runs").glob(".*.tmp-*"):
                pid = int(tmp.name.rsplit("-", 1)[1])
                try:
                    if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) != raylet:
                        continue
                except (FileNotFoundError, IndexError):
                    continue
                for p in (raylet, pid):
                    os.kill(p, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    try:
        res, killed = run_matrix_while(kill_the_node_mid_cell, results, "ray")
    finally:
        cluster.remove_node(worker_node, allow_graceful=False)  # the node's other processes
    (results / "node-loss.log").write_text(res.output)
    assert killed and res.exit_code == 0, res.output
    assert "died" in res.output and "retry 1 of 2" in res.output and "logs/ray.log" in res.output
    assert "[state-dump]" not in res.output and "Raylet is terminated" not in res.output
    assert "(CellActor pid=" not in res.output  # the worker output the fixture's ray.init forwards to the driver
    assert "Raylet is terminated" in (results / "logs" / "ray.log").read_text()  # with its last log lines
    assert "capacity lost with workers that died" in res.output
    assert _counts(results / "harness.duckdb") == _counts(ci_run[0] / "harness.duckdb")
    assert scores(results / "harness.duckdb") == scores(ci_run[0] / "harness.duckdb")
    with store.reader(results / "harness.duckdb") as con:
        wall, compute, overhead, lost = con.execute(
            "SELECT wall_seconds, compute_seconds, overhead_seconds, lost_seconds FROM matrix_runs").fetchone()
    assert lost > 0 and compute + overhead + lost == pytest.approx(wall)
