"""The Slurm executor without Slurm: the sbatch script a dry run shows, then the same job array through submitit's
local executor (real subprocesses) and its debug executor (in this process), each ingested like any cell."""


import pytest
from typer.testing import CliRunner

from harness.cli import app

from conftest import CI_MATRIX, fresh_results
from helpers import run_without_extra, scores

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
