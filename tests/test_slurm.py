"""The Slurm executor without Slurm: the sbatch script a dry run shows, then the same job array through submitit's
local executor (real subprocesses) and its debug executor (in this process), each ingested like any cell."""

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


def test_slurm_without_the_extra_is_one_line_exit_2(monkeypatch, tmp_path):
    assert "pip install -e '.[slurm]'" in run_without_extra(monkeypatch, tmp_path, "submitit", "slurm")


def test_dry_run_shows_the_sbatch_script_and_writes_nothing(tmp_path):
    pytest.importorskip("submitit")
    results = tmp_path / "results"
    res = runner.invoke(app, ["matrix", "run", str(CI_MATRIX), "--executor", "slurm", "--partition", "gpu",
                              "--account", "lab", "--time", "30", "--gpus-per-cell", "1", "--dry-run",
                              "--results", str(results)])
    assert res.exit_code == 0, res.output
    script = res.output[res.output.index("#!/bin/bash"):]
    for line in ("#SBATCH --array=0-4%5", "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --time=30",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=", "#SBATCH --nodes=1",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --job-name=harness",
                 "#SBATCH --mem=1G"):  # the memory plan's RAM for a micro cell (~0.9 GiB), rounded up
        assert line in script, line
    assert f"-m submitit.core._submit {(results / 'logs' / 'slurm').resolve()}/%j" in script
    assert "5 of 5 cells to run on the slurm executor" in res.output
    assert not results.exists()  # a dry run writes nothing


def test_dry_run_asks_a_sharded_cell_its_devices_and_the_plans_memory(tmp_path):
    """One array task per cell with train.devices GPUs and --mem from the memory plan: SmolLM2-135M's 134.5M fp32
    parameters (0.5 GiB) held by the worker and loaded by each of 4 processes, + 0.4 GiB runtime each, + 0.5 GiB."""
    pytest.importorskip("submitit")
    matrix = tmp_path / "m.yaml"
    matrix.write_text("name: sharded\nmodels: [smollm2-135m]\nmethods: {full: {}}\nbudget: {steps: 10}\n"
                      "train: {batch_size: 8, devices: 4, strategy: fsdp}\n")
    res = runner.invoke(app, ["matrix", "run", str(matrix), "--executor", "slurm", "--gpus-per-cell", "1",
                              "--dry-run", "--results", str(tmp_path / "results")])
    assert res.exit_code == 0, res.output
    assert "#SBATCH --gpus-per-node=4" in res.output and "#SBATCH --mem=6G" in res.output


@pytest.mark.slow
def test_slurm_array_through_submitits_local_executor_is_ingested(ci_run, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("HARNESS_SUBMITIT_CLUSTER", "local")
    results = fresh_results(ci_run, tmp_path)
    res = runner.invoke(app, ["matrix", "run", str(CI_MATRIX), "--executor", "slurm", "--workers", "2",
                              "--results", str(results)])
    assert res.exit_code == 0, res.output
    assert "cell 5/5" in res.output
    assert scores(results / "harness.duckdb") == scores(ci_run[0] / "harness.duckdb")
    assert len(list((results / "logs" / "slurm").glob("*/*_log.out"))) == 5  # each array task's own log
    with store.reader(results / "harness.duckdb") as con:
        workers, compute, cells = con.execute("SELECT workers, compute_seconds, compute_parts->>'cells' "
                                              "FROM matrix_runs").fetchone()
        spans = con.execute("SELECT started_at, finished_at FROM runs").fetchall()
    # the cells' compute counts (as the cells ran at once, not as the array allowed: submitit's local executor runs
    # every task of the array at once, so 5 here where --workers allowed 2)
    at_once = max(sum(s <= t < f for s, f in spans) for t, _ in spans)
    assert workers == at_once and float(cells) > 0 and compute >= float(cells)


def _preempt_a_running_task(results: Path, signalled: list) -> None:
    """SIGUSR2, the signal Slurm sends before preempting a job, to the first array task found running a cell (its
    start line names its pid): submitit requeues a task that is not checkpointable, and the task runs again."""
    starts = results / "logs" / "slurm" / "starts"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for f in sorted(starts.glob("*")) if starts.exists() else []:
            lines = f.read_text().splitlines()
            if len(lines) == 1 and not (results / "runs" / f.name).exists():
                time.sleep(1.0)  # into the cell
                try:
                    os.kill(int(lines[0].split()[2]), signal.SIGUSR2)
                except ProcessLookupError:
                    continue
                signalled.append(f.name)
                return
        time.sleep(0.05)


@pytest.mark.slow
def test_a_requeued_task_is_said_and_its_rows_equal_a_clean_run(ci_run, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("HARNESS_SUBMITIT_CLUSTER", "local")
    results = fresh_results(ci_run, tmp_path)
    res, signalled = run_matrix_while(_preempt_a_running_task, results, "slurm")
    assert signalled and res.exit_code == 0, res.output
    assert f"({signalled[0]}): Slurm task" in res.output and "started again (start 2" in res.output
    assert "capacity lost with workers that died" in res.output
    assert "submitit" not in res.output  # submitit's own messages ("Requeued job ...") are in the log file
    assert scores(results / "harness.duckdb") == scores(ci_run[0] / "harness.duckdb")


@pytest.mark.slow
def test_slurm_debug_executor_runs_in_process(ci_run, tmp_path):
    pytest.importorskip("submitit")
    import torch

    from harness.run.jobs import Finished
    from harness.run.plan import jobs_for, plan
    from harness.run.slurm import SlurmExecutor
    from harness.spec import Run, load_matrix

    results = fresh_results(ci_run, tmp_path)
    p = plan(load_matrix(CI_MATRIX))
    jobs = jobs_for(p, {p.bases[0].id}, threads=1)
    threads = torch.get_num_threads()
    try:
        events = list(SlurmExecutor(Run(executor="slurm"), 1, results, cluster="debug").run(jobs, results))
    finally:
        torch.set_num_threads(threads)  # the cell ran in this process
    assert events[-1] == Finished(jobs[0], "ok", None, results / "runs" / jobs[0].id)
    import pyarrow.parquet as pq

    assert pq.read_table(results / "runs" / jobs[0].id / "samples.parquet").to_pylist() == \
        pq.read_table(ci_run[0] / "runs" / jobs[0].id / "samples.parquet").to_pylist()
