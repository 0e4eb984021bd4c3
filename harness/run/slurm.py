"""The Slurm executor: the pending cells go to Slurm as one job array, through submitit.

Each array task runs one cell with the cell recipe and writes its folder under the results folder, which must be on
a filesystem the compute nodes share with this machine: the driver polls the array and ingests each finished cell
folder (it alone writes the database). submitit's job folder (pickled jobs, each task's stdout and stderr) is
RESULTS/logs/slurm/. `--dry-run` prints the sbatch script instead of submitting it.

Each task notes its start (RESULTS/logs/slurm/starts/<cell id>: one line per start), so the driver sees when a
cell runs and when Slurm runs it again (a requeue after preemption, a node failure or `scancel --requeue`), whether
or not the cluster keeps accounting for sacct. The runner keeps submitit's and sacct's own messages in
RESULTS/logs/slurm.log.

Without Slurm, HARNESS_SUBMITIT_CLUSTER=local runs the array as real subprocesses on this machine and =debug in this
process (submitit's own executors; that is how the tests run this path).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Iterator

from harness.run.jobs import Event, ExecutorError, ExecutorInfo, Finished, Job, Note, Started
from harness.spec import Run

INSTALL = "--executor slurm needs submitit, which is not installed: pip install -e '.[slurm]' (or pip install " \
          "submitit==1.5.4)"
POLL_S = 2.0  # between looks at the array's state: sacct once per look for the whole array (submitit batches it)


def run_cell(job: Job, results: str) -> dict:
    """One array task: the cell recipe, with progress to the task's log."""
    from harness.run.cell import run_job

    starts = _starts_file(Path(results), job)
    starts.parent.mkdir(parents=True, exist_ok=True)
    with starts.open("a") as f:  # one line per start: a second one means Slurm ran the task again
        f.write(f"{time.time()} {os.uname().nodename} {os.getpid()}\n")
    row = run_job(job, Path(results), lambda ev: None)
    return {"status": row["status"], "error": row["error"]}


def _starts_file(results: Path, job: Job) -> Path:
    return results / "logs" / "slurm" / "starts" / job.id


def _starts(results: Path, job: Job) -> list[float]:
    """When each start of the cell's task began (epoch seconds)."""
    path = _starts_file(results, job)
    return [float(line.split()[0]) for line in path.read_text().splitlines() if line] if path.exists() else []


def _reason(e: BaseException) -> str:
    """One line: submitit's errors carry the whole remote traceback."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return next((line for line in reversed(lines) if not line.startswith(("File ", "raise ", "^"))), type(e).__name__)


class SlurmExecutor:
    def __init__(self, opts: Run, threads: int, results: Path, cluster: str | None = None):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ExecutorError(INSTALL) from None
        self.opts = opts
        self.cluster = cluster or os.environ.get("HARNESS_SUBMITIT_CLUSTER") or "slurm"
        if self.cluster not in ("slurm", "local", "debug"):
            raise ExecutorError(f"HARNESS_SUBMITIT_CLUSTER: expected slurm, local or debug, got {self.cluster!r}")
        self.folder = results.resolve() / "logs" / "slurm"
        self.info = ExecutorInfo("slurm", 0, threads, loggers=("submitit",))

    def _parameters(self, jobs: list[Job]) -> dict:
        """sbatch parameters of the array: one task per cell, each with its own GPUs (at least train.devices of them
        when --gpus-per-cell asks for GPUs), threads and memory (the memory plan's RAM for the largest cell: without
        --mem a task gets the partition's default, often the whole node, and the tasks run one at a time)."""
        from harness.run.plan import jobs_memory_bytes

        devices = max(j.config.get("train", {}).get("devices", 1) for j in jobs)
        gpus = max(self.opts.gpus, devices) if self.opts.gpus else None
        memory = jobs_memory_bytes(jobs, bool(gpus))
        return {"job_name": "harness", "time": self.opts.time_minutes, "cpus_per_task": self.info.threads,
                "gpus_per_node": gpus, "partition": self.opts.partition,
                "account": self.opts.account, "array_parallelism": self.opts.workers or len(jobs), "nodes": 1,
                "ntasks_per_node": 1, "mem": f"{-(-memory // 2**30)}G" if memory else None}

    def describe(self, jobs: list[Job], results: Path) -> str:
        """The sbatch script this executor would submit for `jobs` (`--dry-run`)."""
        from submitit.slurm.slurm import _make_sbatch_string

        folder = self.folder / "%j"  # as submitit names each job's folder
        command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
        return _make_sbatch_string(command=command, folder=folder, map_count=len(jobs),
                                   **{k: v for k, v in self._parameters(jobs).items() if v is not None})

    def run(self, jobs: list[Job], results: Path) -> Iterator[Event]:
        import submitit

        if self.cluster == "slurm" and submitit.AutoExecutor.which() != "slurm":
            raise ExecutorError("--executor slurm: no Slurm on this machine (srun not found); run it on a login "
                                "node, or set HARNESS_SUBMITIT_CLUSTER=local to run the array here")
        ex = submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster)
        p = self._parameters(jobs)
        ex.update_parameters(name=p["job_name"], timeout_min=p["time"], cpus_per_task=p["cpus_per_task"],
                             gpus_per_node=p["gpus_per_node"] or 0, nodes=1, tasks_per_node=1,
                             **({"slurm_mem": p["mem"]} if p["mem"] else {}),
                             slurm_partition=p["partition"], slurm_account=p["account"],
                             slurm_array_parallelism=p["array_parallelism"])
        submitted = ex.map_array(run_cell, jobs, [str(results.resolve())] * len(jobs))
        waiting = list(zip(jobs, submitted))
        starts: dict[str, list[float]] = {}
        lost, peak = 0.0, 1
        while waiting:
            for job, sj in list(waiting):
                now = _starts(results, job)
                if len(now) > len(starts.get(job.id, [])):
                    if job.id not in starts:
                        yield Started(job, f"slurm {sj.job_id}")
                    else:  # the earlier starts' work is lost
                        lost += now[-1] - starts[job.id][-1]
                        yield Note(f"cell {job.label} ({job.id}): Slurm task {sj.job_id} started again (start "
                                   f"{len(now)}: requeued after preemption, a node failure or scancel --requeue)")
                    starts[job.id] = now
                elif job.id not in starts and sj.done():  # ended before its cell began (e.g. cancelled)
                    starts[job.id] = []
                    yield Started(job, f"slurm {sj.job_id}")
                if not sj.done():
                    continue
                waiting.remove((job, sj))
                try:
                    out = sj.result()
                except Exception as e:  # the task died (timeout, node failure, preemption) or raised
                    yield Finished(job, "failed", f"Slurm task {sj.job_id}: {_reason(e)} (log: "
                                   f"{sj.paths.stderr})", None)
                    continue
                folder = results / "runs" / job.id
                if not (folder / "result.json").exists():
                    yield Finished(job, "failed", f"Slurm task {sj.job_id} finished but {folder} is not here: the "
                                   f"results folder (--results) must be on a filesystem every node shares", None)
                    continue
                yield Finished(job, out["status"], out["error"], folder)
            # cells at once, as Slurm ran them (the array may allow more than the cluster has room for)
            peak = max(peak, sum(job.id in starts for job, _ in waiting))
            self.info.slots = peak
            self.info.lost_seconds = lost / peak
            if waiting:
                time.sleep(POLL_S)
