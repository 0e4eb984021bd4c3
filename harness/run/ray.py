"""The Ray executor: each pending cell runs on a long-lived Ray actor, one actor per cell slot of the cluster.

An actor asks Ray for what one cell needs (1 GPU for a GPU cell; `threads` CPUs for a CPU cell), so a node with 8
GPUs runs 8 cells at once, never two on one GPU, and a cluster as many as it has. Actors live for the whole matrix:
like the local workers they do the heavy imports once and keep the encoded-data cache across cells, so a cell costs
what it costs locally. Without an address Ray starts on this machine (and stops with the run).

Results: an actor that sees the driver's results folder (a shared filesystem; checked with a marker file) writes the
cell folder there atomically, as the local workers do; one that does not gets the cell's inputs (its data set and
base model folders) through Ray's object store, runs in a scratch folder and returns the finished cell folder as a
tar archive, which the driver puts in place. Either way the driver alone writes the database.

A cell whose actor dies (its node is lost, OOM, kill -9) is run again on another actor, up to `retries` times, then
recorded as failed with the reason; a cell that fails by itself (its recipe raised) is not retried. Finished cells
are never rerun: they are skipped before anything is submitted, and a rerun after the driver is killed continues.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Iterator

from harness.core.atomic import atomic_dir
from harness.run.jobs import Evaluating, Event, ExecutorError, ExecutorInfo, Finished, Job, Note, Started, Step
from harness.spec import Run

# the driver's look at finished cells and progress: each look is a few RPCs, which on a small machine take CPU
# from the cells themselves; a finished cell still wakes ray.wait at once
POLL_S = 1.0
STALL_S = 600  # how long cells may wait with no worker up at all (a lost node's replacement may need a new node)
INSTALL = "--executor ray needs Ray, which is not installed: pip install -e '.[ray]' (or pip install ray==2.60.0)"


def _pack(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname=".")
    return buf.getvalue()


def _unpack(blob: bytes, final: Path) -> None:
    """Into place atomically: a temporary sibling, then one rename."""
    with atomic_dir(final) as tmp, tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(tmp, filter="data")


def _reason(e: BaseException) -> str:
    """One line for a lost worker: Ray's own messages run to dozens of lines."""
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first[:300]}"


class CellActor:
    """One cell slot. Wrapped with ray.remote (and its resources) by RayExecutor, so importing this module needs no
    Ray."""

    def __init__(self, progress):
        from harness.run.cell import warm_up

        warm_up()
        self.progress = progress
        self.scratch = Path(tempfile.gettempdir()) / "harness-ray" / uuid.uuid4().hex

    def where(self) -> str:
        import ray

        return f"ray {ray.util.get_node_ip_address()} pid {os.getpid()}"

    def sees(self, marker: str, token: str) -> bool:
        path = Path(marker)
        return path.exists() and path.read_text() == token

    def run(self, job: Job, results: str | None, inputs: dict) -> tuple[dict, bytes | None]:
        """Run one cell; with `results` None, in a scratch folder fed from `inputs` (relative path -> object ref of
        a tar archive), returning the cell folder as a tar archive."""
        import ray

        from harness.run.cell import run_job

        def emit(ev) -> None:
            if isinstance(ev, Step):
                self.progress.put_nowait(("step", job.id, ev.step, ev.total, ev.loss))
            elif isinstance(ev, Evaluating):
                self.progress.put_nowait(("eval", job.id))

        if results is not None:
            return run_job(job, Path(results), emit), None
        for rel, ref in inputs.items():
            if not (self.scratch / rel).exists():
                (self.scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                _unpack(ray.get(ref), self.scratch / rel)
        row = run_job(job, self.scratch, emit)
        folder = self.scratch / "runs" / job.id
        blob = _pack(folder)
        shutil.rmtree(folder)
        return row, blob


def _inputs(job: Job, results: Path) -> list[str]:
    """The folders under the results folder that a cell reads: its base model and its data set."""
    from harness import models
    from harness.data.build import dataset_dir

    folder = models.model_path(models.resolve(job.config["model"]), results, log=lambda *a: None).resolve()
    out = [str(folder.relative_to(results.resolve()))] if folder.is_relative_to(results.resolve()) else []
    if job.kind == "sft":
        out.append(str(dataset_dir(Path("."), job.config["dataset_id"])))
    return out


class RayExecutor:
    def __init__(self, opts: Run, threads: int, share: bool | None = None):
        """`share`: None finds out per actor whether it sees the results folder; False always ships through the
        object store (what a cluster without a shared filesystem does)."""
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ExecutorError(INSTALL) from None
        self.opts, self.share = opts, share
        self.info = ExecutorInfo("ray", 0, threads, loggers=("ray",))

    def _resources(self, jobs: list[Job]) -> tuple[dict, int]:
        """The actor's resource request, and how many actors the cluster fits."""
        import ray

        from harness.run.plan import jobs_memory_bytes

        total = ray.cluster_resources()
        devices = max(j.config.get("train", {}).get("devices", 1) for j in jobs)  # a data-parallel cell's GPUs
        gpus = self.opts.gpus if self.opts.gpus is not None else (devices if total.get("GPU", 0) >= 1 else 0)
        if gpus:  # a GPU cell keeps the node's CPUs per GPU for its threads (16 cores, 8 GPUs: 2 each)
            self.info.threads = max(1, int(total.get("CPU", 1) // total.get("GPU", 1)))
            request, slots = {"num_gpus": gpus, "num_cpus": 1}, int(total.get("GPU", 0) // gpus)
        else:
            request, slots = {"num_cpus": self.info.threads}, int(total.get("CPU", 1) // self.info.threads)
        memory = jobs_memory_bytes(jobs, bool(gpus))  # the memory plan's RAM: cells that do not fit never share a node
        if memory:
            request["memory"] = memory
            slots = min(slots, int(total.get("memory", 0) // memory))
        slots = min(self.opts.workers or slots, slots, len(jobs))
        if slots < 1:
            raise ExecutorError(f"the Ray cluster ({dict(total)}) cannot fit one cell ({request})")
        return request, slots

    def run(self, jobs: list[Job], results: Path) -> Iterator[Event]:
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        t0 = time.perf_counter()
        results = results.resolve()  # actors run in Ray's own working directory
        started_here = _connect(self.opts.address)
        # the progress queue lives on the driver's node: it must outlast any worker node
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        progress = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        request, slots = self._resources(jobs)
        token = uuid.uuid4().hex
        marker = results / f".ray-shared-{token}"
        marker.write_text(token)
        pool = _Pool(ray.remote(**request)(CellActor), progress, jobs, results, self.opts.retries,
                     results / "logs" / "ray.log")  # where the runner keeps Ray's own messages
        try:
            for _ in range(slots):
                pool.spawn()
            alive_at = time.monotonic()
            while pool.pending or pool.busy:
                done, _ = ray.wait(list(pool.starting) + list(pool.busy), num_returns=1, timeout=POLL_S)
                out: list[Event] = []  # yielded after the next cells are handed out: actors compute while we ingest
                for ref in done:
                    if ref not in pool.starting:
                        out += pool.collect(ref)
                    elif (note := pool.up(ref, marker, token, self.share)) is not None:
                        out.append(note)
                    else:
                        self.info.parts["worker start"] = time.perf_counter() - t0  # the last to be ready
                out += pool.hand_out()
                if pool.idle or pool.busy:
                    alive_at = time.monotonic()
                elif time.monotonic() - alive_at > STALL_S:  # every worker is gone and none can start again
                    out += pool.give_up(f"no Ray worker could start for {STALL_S} s (cluster: "
                                        f"{dict(ray.available_resources())}, a cell needs {request})")
                yield from out + pool.drain()
        finally:
            for actor in pool.actors():
                ray.kill(actor)
            ray.kill(progress.actor)
            marker.unlink(missing_ok=True)
            self.info.slots = slots
            self.info.lost_seconds = pool.lost_seconds() / slots
            if started_here:
                ray.shutdown()


def _connect(address: str | None) -> bool:
    """Attach to the cluster at `address`, or start Ray on this machine; whether this call did (then the run stops
    it again). A driver that already has Ray up keeps it."""
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except ConnectionError as e:
        raise ExecutorError(f"--address {address}: cannot reach a Ray cluster ({e})") from None
    return True


class _Pool:
    """The driver's view of its actors (starting, idle, busy with a cell) and of the cells still to hand out."""

    def __init__(self, remote, progress, jobs: list[Job], results: Path, retries: int, log: Path):
        self.remote, self.progress, self.results, self.retries, self.log = remote, progress, results, retries, log
        self.by_id = {j.id: j for j in jobs}
        self.pending = deque(jobs)
        self.starting: dict = {}  # ref of where() -> actor, until the actor is up
        self.names: dict = {}  # actor -> "ray <ip> pid <pid>"
        self.shared: dict = {}  # actor -> sees the results folder
        self.idle: list = []
        self.busy: dict = {}  # ref of run() -> (actor, job, when it was handed out)
        self.attempts: dict[str, int] = {}
        self.blobs: dict[str, object] = {}  # input folder -> object ref (only when some actor needs them)
        self.lost = 0.0  # slot-seconds lost with dead workers: their cells' work so far, their slots' empty time
        self.down: list[float] = []  # when each worker not yet replaced died

    def lost_seconds(self) -> float:
        """The lost slot-seconds, counting the slots still empty until now."""
        return self.lost + sum(time.monotonic() - t for t in self.down)

    def spawn(self) -> None:
        actor = self.remote.remote(self.progress)
        self.starting[actor.where.remote()] = actor

    def actors(self) -> list:
        return list(self.starting.values()) + self.idle + [a for a, _, _ in self.busy.values()]

    def up(self, ref, marker: Path, token: str, share: bool | None) -> Note | None:
        """An actor has started: idle from now on, knowing whether it sees the results folder. A Note (and another
        actor on its way) when it died starting."""
        import ray

        actor = self.starting.pop(ref)
        try:
            self.names[actor] = ray.get(ref)
            sees = ray.get(actor.sees.remote(str(marker), token)) if share is not False else False
        except ray.exceptions.RayActorError as e:
            self.spawn()
            return Note(f"a Ray worker could not start ({_reason(e)}); starting another")
        self.shared[actor] = sees
        self.idle.append(actor)
        if self.down:  # a dead worker's slot is filled again
            self.lost += time.monotonic() - self.down.pop(0)
        return None

    def collect(self, ref) -> list[Event]:
        """A cell's run has returned: its folder put in place, or its actor replaced and the cell retried."""
        import ray

        actor, job, since = self.busy.pop(ref)
        try:
            row, blob = ray.get(ref)
        except ray.exceptions.RayActorError as e:  # the worker died: lost node, OOM, kill -9
            self.lost += time.monotonic() - since
            self.down.append(time.monotonic())
            ray.kill(actor)
            self.spawn()  # a replacement; it waits for room on the cluster if the node is gone
            self.attempts[job.id] = self.attempts.get(job.id, 0) + 1
            if self.attempts[job.id] <= self.retries:
                self.pending.appendleft(job)
                return [Note(f"cell {job.label} ({job.id}): its Ray worker ({self.names[actor]}) died "
                             f"({_reason(e)}); retry {self.attempts[job.id]} of {self.retries} (Ray's messages: "
                             f"{self.log})")]
            return [Finished(job, "failed", f"its Ray worker died {self.attempts[job.id]} times; "
                                            f"last: {_reason(e)}", None)]
        except ray.exceptions.RayTaskError as e:  # outside the recipe (which records its own errors)
            self.idle.append(actor)
            cause = e.cause if e.cause is not None else e
            return [Finished(job, "failed", f"{type(cause).__name__}: {cause}", None)]
        self.idle.append(actor)
        if blob is not None:
            _unpack(blob, self.results / "runs" / job.id)
        return [Finished(job, row["status"], row["error"], self.results / "runs" / job.id)]

    def hand_out(self) -> list[Event]:
        """The next cells to the idle actors, with their inputs through the object store for an actor that does not
        see the results folder."""
        import ray

        out: list[Event] = []
        while self.idle and self.pending:
            actor, job = self.idle.pop(), self.pending.popleft()
            inputs = {}
            if not self.shared[actor]:
                for rel in _inputs(job, self.results):
                    if rel not in self.blobs:
                        self.blobs[rel] = ray.put(_pack(self.results / rel))
                    inputs[rel] = self.blobs[rel]
            ref = actor.run.remote(job, str(self.results) if self.shared[actor] else None, inputs)
            self.busy[ref] = (actor, job, time.monotonic())
            out.append(Started(job, self.names[actor]))
        return out

    def give_up(self, reason: str) -> list[Event]:
        out: list[Event] = [Finished(job, "failed", reason, None) for job in self.pending]
        self.pending.clear()
        return out

    def drain(self) -> list[Event]:
        """Progress the actors queued since the last look (steps of cells still running)."""
        n = self.progress.qsize()
        running = {job.id for _, job, _ in self.busy.values()}
        out: list[Event] = []
        for item in self.progress.get_nowait_batch(n) if n else []:
            if item[1] in running:
                out.append(Step(self.by_id[item[1]], *item[2:]) if item[0] == "step"
                           else Evaluating(self.by_id[item[1]]))
        return out
