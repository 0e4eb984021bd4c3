"""The runner around the executors: options, the plain progress lines of a non-terminal, run accounting."""

import json

import pytest

from harness import store
from harness.run.plan import jobs_for, plan
from harness.run.runner import RunStats, _curation_compute, run_options
from harness.spec import SpecError, load_matrix, parse_matrix

from conftest import CI_MATRIX


def test_where_cells_run_is_not_part_of_their_ids():
    plain = plan(load_matrix(CI_MATRIX))
    text = CI_MATRIX.read_text() + "run: {executor: ray, retries: 5, partition: gpu}\n"
    elsewhere = plan(parse_matrix(text))
    assert elsewhere.matrix.run.executor == "ray" and elsewhere.ids == plain.ids


def test_executor_comes_from_flag_then_environment_then_matrix(monkeypatch):
    p = plan(parse_matrix(CI_MATRIX.read_text() + "run: {executor: slurm, retries: 5}\n"))
    monkeypatch.delenv("HARNESS_EXECUTOR", raising=False)
    assert run_options(p).executor == "slurm"
    monkeypatch.setenv("HARNESS_EXECUTOR", "ray")
    assert run_options(p).executor == "ray" and run_options(p).retries == 5
    assert run_options(p, "local", retries=None, workers=3).executor == "local"
    assert run_options(p, "local", workers=3).workers == 3
    monkeypatch.setenv("HARNESS_EXECUTOR", "kubernetes")
    with pytest.raises(SpecError, match="HARNESS_EXECUTOR: expected one of local, ray, slurm, got 'kubernetes'"):
        run_options(p)


def test_a_log_gets_one_plain_line_per_finished_cell(ci_run):
    """CliRunner's stderr is not a terminal, like a CI log: no bars, one line per cell with k/n and its scores."""
    lines = [line for line in ci_run[1].splitlines() if line.startswith("cell ")]
    assert [line.split()[1] for line in lines] == [f"{k}/5" for k in range(1, 6)]
    assert all(" learn " in line and " forget " in line and line.endswith("s)") for line in lines)
    assert not any(line.startswith("cells ") for line in ci_run[1].splitlines())  # the terminal's overall bar


def test_matrix_runs_records_the_executor_and_compute_parts(ci_run):
    with store.reader(ci_run[0] / "harness.duckdb") as con:
        executor, parts, compute, overhead, wall = con.execute(
            "SELECT executor, compute_parts, compute_seconds, overhead_seconds, wall_seconds FROM matrix_runs"
        ).fetchone()
    parts = json.loads(parts)
    assert executor == "local" and set(parts) == {"base pretraining", "curation", "cells"}
    assert compute == pytest.approx(sum(parts.values())) and compute + overhead == pytest.approx(wall)


def test_curation_that_ran_models_is_compute(tmp_path):
    """A step's model time counts as compute, bounded by the step's wall time (cached generations are counted at
    their original cost in compute_seconds, but did not cost this run anything)."""
    folder = tmp_path / "d"
    folder.mkdir()
    steps = [{"step": "best_of_k", "seconds": 5.0, "compute_seconds": 4.0},
             {"step": "distill", "seconds": 1.0, "compute_seconds": 30.0},  # cached: 30 s once, 1 s now
             {"step": "dedup", "seconds": 0.5}]
    (folder / "card.json").write_text(json.dumps({"steps": steps}))
    assert _curation_compute([folder]) == 5.0
    stats = RunStats(wall_seconds=100.0, compute={"cells": 90.0, "curation": 5.0}, parts={"data": 2.0})
    assert stats.overhead_seconds == 5.0
    assert stats.line() == ("harness overhead: 5.0s of 100.0s wall (5.0%); compute 95.0s (cells 90.0s, curation "
                            "5.0s); of the overhead: data 2.0s")


def test_capacity_lost_with_dead_workers_is_neither_compute_nor_overhead():
    stats = RunStats(wall_seconds=100.0, compute={"cells": 60.0}, parts={"worker start": 3.0}, lost_seconds=30.0)
    assert stats.overhead_seconds == 10.0
    assert stats.line() == ("harness overhead: 10.0s of 100.0s wall (10.0%); compute 60.0s (cells 60.0s); of the "
                            "overhead: worker start 3.0s; capacity lost with workers that died: 30.0s")


def test_cells_run_seed_by_seed_the_longest_expected_first():
    """LoRA cells (~1.4x a full cell's time on a CPU) go first within a seed: the matrix ends on the short ones."""
    p = plan(parse_matrix(CI_MATRIX.read_text().replace("seeds: [0]", "seeds: [0, 1]")))
    labels = [j.label for j in jobs_for(p, set(p.ids), threads=1)]
    assert labels == ["base micro", "lora/curated/s0", "lora/bulk/s0", "full/curated/s0", "full/bulk/s0",
                      "lora/curated/s1", "lora/bulk/s1", "full/curated/s1", "full/bulk/s1"]


ENGINE = r'''
import logging, os, subprocess, sys
from pathlib import Path
from rich.console import Console
from harness.run.jobs import engine_output

console = Console(stderr=True)
logging.getLogger("engine").addHandler(logging.StreamHandler(sys.stderr))
with engine_output(Path(sys.argv[1]), ("engine",), console):
    console.print("progress for the user")
    print("[state-dump] printed by the engine's thread")
    print("forwarded worker line", file=sys.stderr)
    logging.getLogger("engine").warning("Bypassing sacct error")
    os.write(2, b"C++ log line\n")
    subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('Slurm accounting storage is disabled\\n')"])
console.print("after the run")
print("the command's own output")
'''


def test_an_engines_own_output_goes_to_its_log_and_progress_to_the_user(tmp_path):
    """A real process whose stdout and stderr are pipes (file descriptors, as on a terminal): only the progress view
    and what comes after reach them."""
    import subprocess
    import sys

    log = tmp_path / "logs" / "engine.log"
    res = subprocess.run([sys.executable, "-c", ENGINE, str(log)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "progress for the user\nafter the run\n" and res.stdout == "the command's own output\n"
    assert set(log.read_text().splitlines()) == {
        "[state-dump] printed by the engine's thread", "forwarded worker line", "Bypassing sacct error",
        "C++ log line", "Slurm accounting storage is disabled"}


def test_local_workers_score_the_base_while_the_data_builds_and_a_failed_build_leaves_nothing(tmp_path, micro_base,
                                                                                            monkeypatch):
    """The base job begins before the data sets are built (it needs none); when the build then fails, its worker is
    stopped and its half-written folder removed: the run leaves no cell behind."""
    import time

    from harness.run import runner

    p = plan(load_matrix(CI_MATRIX))
    results = tmp_path / "results"
    base_tmp = f".{p.bases[0].id}.tmp-*"
    executors, make_executor = [], runner.make_executor

    def build_data(*args):
        deadline = time.monotonic() + 120
        while not list((results / "runs").glob(base_tmp)):  # the worker has begun the base job
            assert time.monotonic() < deadline, "the base job did not begin while the data was building"
            time.sleep(0.05)
        raise RuntimeError("a curation step failed")

    monkeypatch.setattr(runner, "make_executor", lambda *a: executors.append(make_executor(*a)) or executors[-1])
    monkeypatch.setattr(runner, "_build_data", build_data)
    with pytest.raises(RuntimeError, match="a curation step failed"):
        runner.execute(p, results, results / "harness.duckdb", run_options(p, "local"))
    assert all(w.proc.poll() is not None for w in executors[0].pool)
    assert list((results / "runs").iterdir()) == []
