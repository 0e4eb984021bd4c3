"""The local executor: a pool of long-lived worker processes on this machine, fed one job at a time.

`python -m harness.run.local RESULTS` is a worker: it does the heavy imports once, says it is ready, then reads jobs
(JSON lines) on stdin and runs each with the cell recipe (harness/run/cell.py). Progress goes back as JSON lines on
the original stdout; everything libraries print goes to stderr (the worker's log file, results/logs/worker-<i>.log).
This JSON-lines protocol is private to this module.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from harness.run.jobs import Evaluating, Event, ExecutorInfo, Finished, Job, Started, Step


class _Worker:
    def __init__(self, results: Path, log_path: Path, events: queue.Queue, index: int):
        from harness.models import worker_env

        env = {**os.environ, **worker_env()}
        self.log_path = log_path
        self.log = log_path.open("a")
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.run.local", str(results)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1, env=env)
        self.index = index
        threading.Thread(target=self._read, args=(events,), daemon=True).start()

    def _read(self, events: queue.Queue) -> None:
        for line in self.proc.stdout:
            events.put((self.index, json.loads(line)))
        events.put((self.index, {"event": "exit", "code": self.proc.wait()}))

    def send(self, job: Job) -> None:
        self.proc.stdin.write(json.dumps(dataclasses.asdict(job)) + "\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        """No more jobs: the worker exits after its current one."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def close(self) -> None:
        self.finish()
        self.proc.wait()
        self.log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.close()


class LocalExecutor:
    def __init__(self, workers: int, threads: int):
        self.info = ExecutorInfo("local", workers, threads)
        self.pool: list[_Worker] = []
        self.events: queue.Queue = queue.Queue()
        self.current: dict[int, Job] = {}  # worker index -> the job it runs

    def start(self, results: Path, n_jobs: int) -> None:
        """Start the workers ahead of the jobs: their imports (~7 s each) overlap the runner's memory plan, base
        pretraining and data builds."""
        logs = results / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.pool = [_Worker(results, logs / f"worker-{i}.log", self.events, i)
                     for i in range(min(self.info.slots, n_jobs))]
        self.info.slots = len(self.pool)

    def begin(self, jobs: list[Job]) -> None:
        """Hand jobs to the started workers now, one each, before `run` (which reports them): the base models are
        scored while the runner builds the data sets. A worker still importing reads its job when it is ready."""
        for idx, job in zip(range(len(self.pool)), jobs):
            self.current[idx] = job
            self.pool[idx].send(job)

    def close(self) -> None:
        for w in self.pool:
            w.close()

    def abort(self) -> None:
        """Stop the workers at once (the run was refused before any job)."""
        for w in self.pool:
            w.kill()

    def run(self, jobs: list[Job], results: Path) -> Iterator[Event]:
        t_run = time.perf_counter()
        if not self.pool:
            self.start(results, len(jobs))
        events, pool, logs, current = self.events, self.pool, results / "logs", self.current
        begun = {job.id for job in current.values()}
        pending = [job for job in jobs if job.id not in begun]
        alive = len(pool)
        try:
            for idx, job in list(current.items()):
                yield Started(job, f"worker {idx}")
            while alive:
                idx, ev = events.get()
                kind = ev["event"]
                if kind in ("ready", "done"):
                    if kind == "ready":  # what the run waited for the last worker (not what start() overlapped)
                        self.info.parts["worker start"] = time.perf_counter() - t_run
                        if idx in current:  # it has its job from begin()
                            continue
                    done = current.pop(idx) if kind == "done" else None
                    if pending:  # the next job first: the worker computes while the runner ingests
                        current[idx] = pending.pop(0)
                        pool[idx].send(current[idx])
                        yield Started(current[idx], f"worker {idx}")
                    else:
                        pool[idx].finish()
                    if done:
                        yield Finished(done, ev["status"], ev["error"], results / "runs" / done.id)
                elif kind == "step":
                    yield Step(current[idx], ev["step"], ev["total"], ev["loss"])
                elif kind == "eval":
                    yield Evaluating(current[idx])
                elif kind == "exit":
                    alive -= 1
                    if idx in current:  # died mid-job without reporting: a crash (see its log)
                        yield Finished(current.pop(idx), "failed", f"worker {idx} exited (code {ev['code']}) "
                                       f"during the cell; see {pool[idx].log_path}", None)
            for job in pending:  # every worker is gone
                yield Finished(job, "failed", f"not run: every worker exited (see {logs})", None)
        finally:
            self.close()


def main() -> None:
    from harness.run.cell import Abandoned, run_job, warm_up

    results = Path(sys.argv[1])
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints go to the log, not into the event stream
    parent = os.getppid()

    def emit(event) -> None:
        if os.getppid() != parent:
            raise Abandoned("the harness process that started this worker is gone")
        if isinstance(event, Step):
            out.write(json.dumps({"event": "step", "step": event.step, "total": event.total, "loss": event.loss}) + "\n")
        elif isinstance(event, Evaluating):
            out.write('{"event": "eval"}\n')

    warm_up()
    out.write('{"event": "ready"}\n')
    for line in sys.stdin:
        job = Job(**json.loads(line))
        try:
            row = run_job(job, results, emit)
        except Abandoned:
            return
        out.write(json.dumps({"event": "done", "status": row["status"], "error": row["error"]}) + "\n")


def _exit_now() -> None:
    """Leave without the interpreter's teardown of torch, transformers and lm-eval (~1 s, which the end of every run
    waited for: the runner waits for its workers to exit): the exit handlers run (temporary folders, logging), then
    os._exit, as multiprocessing's children exit. Everything the worker made is on disk and reported by then."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
    _exit_now()
