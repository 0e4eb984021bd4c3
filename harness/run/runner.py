"""`harness matrix run`: plan the cells, build what they need, hand the rest to an executor, ingest results.

This process is the single DuckDB writer whatever the executor: cells only write files under results/runs/, and the
runner ingests each finished cell in one transaction when the executor reports it. A rerun skips every cell whose
folder says `ok` (ingesting it first if a kill came between the cell's rename and the ingest).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from harness import models, store
from harness.data.build import build, dataset_dir, load_rows
from harness.run import cell
from harness.run.jobs import Executor, Finished, engine_output
from harness.run.plan import Plan, clean_partial, default_workers, finished, jobs_for
from harness.run.progress import ProgressView
from harness.spec import Run, SpecError

EXECUTORS = ("local", "ray", "slurm")


@dataclass
class RunStats:
    """Where a matrix run's wall time went. Compute is what the cells did (training and evaluation, shared out over
    the workers), pretraining a base, and curation steps that ran models (generation, embeddings, judging); overhead
    is the rest: process start and imports, the data pipeline itself, model loading and encoding, ingest, and
    workers idle while the last cells finish. Capacity lost with workers that died (a lost node, a requeued Slurm
    task: the work done on the cells that ran again, and the slots left empty) is neither, and is reported apart."""
    executor: str = "local"
    cells_run: int = 0
    failed: int = 0
    workers: int = 0
    wall_seconds: float = 0.0
    compute: dict = field(default_factory=dict)  # compute parts (seconds of wall time)
    parts: dict = field(default_factory=dict)  # overhead parts (wall-clock seconds)
    lost_seconds: float = 0.0  # capacity lost with workers that died (wall seconds)
    warnings: list[str] = field(default_factory=list)  # shown under the summary (the contamination audit)

    @property
    def compute_seconds(self) -> float:
        return sum(self.compute.values())

    @property
    def overhead_seconds(self) -> float:
        return max(0.0, self.wall_seconds - self.compute_seconds - self.lost_seconds)

    def line(self) -> str:
        def listed(d: dict) -> str:
            return ", ".join(f"{k} {v:.1f}s" for k, v in d.items() if v >= 0.05)

        share = self.overhead_seconds / self.wall_seconds if self.wall_seconds else 0.0
        compute = listed(self.compute)
        return (f"harness overhead: {self.overhead_seconds:.1f}s of {self.wall_seconds:.1f}s wall ({share:.1%}); "
                f"compute {self.compute_seconds:.1f}s" + (f" ({compute})" if compute else "")
                + (f"; of the overhead: {listed(self.parts)}" if listed(self.parts) else "")
                + (f"; capacity lost with workers that died: {self.lost_seconds:.1f}s" if self.lost_seconds else ""))


def run_options(p: Plan, executor: str | None = None, **flags) -> Run:
    """The matrix's `run:` section, then HARNESS_EXECUTOR, then command-line flags (None: not given)."""
    opts = p.matrix.run
    env = os.environ.get("HARNESS_EXECUTOR")
    for where, name in (("HARNESS_EXECUTOR", env), ("--executor", executor)):
        if name and name not in EXECUTORS:
            raise SpecError(f"{where}: expected one of {', '.join(EXECUTORS)}, got {name!r}")
    opts = replace(opts, executor=executor or env or opts.executor)
    return replace(opts, **{k: v for k, v in flags.items() if v is not None})


def make_executor(p: Plan, opts: Run, results: Path) -> Executor:
    """The executor for these options; an engine that is not installed fails here, before anything runs."""
    workers = opts.workers or default_workers(p)
    threads = max(1, (os.cpu_count() or 1) // workers)  # as many threads as this machine's cores allow
    if opts.executor == "ray":
        from harness.run.ray import RayExecutor

        return RayExecutor(opts, threads)
    if opts.executor == "slurm":
        from harness.run.slurm import SlurmExecutor

        return SlurmExecutor(opts, threads, results)
    from harness.run.local import LocalExecutor

    return LocalExecutor(workers, threads)


def _curation_compute(folders: list[Path]) -> float:
    """Model time of the data steps built just now: each step's model time, at most its wall time (a step's
    compute_seconds counts cached generations at their original cost, which this run did not spend)."""
    import json

    total = 0.0
    for folder in folders:
        for st in json.loads((folder / "card.json").read_text())["steps"]:
            total += min(st.get("compute_seconds") or 0.0, st.get("seconds") or 0.0)
    return total


def execute(p: Plan, results: Path, db: Path, opts: Run, force: bool = False, dry_run: bool = False,
            console=None, preflight: Callable[[], None] | None = None) -> RunStats:
    """Run every unfinished cell on the executor `opts` names; returns where the time went (and how many failed).
    `preflight` (the memory plan) may refuse the run by raising: then nothing is left written."""
    from rich.console import Console

    t_start = time.perf_counter()
    stats = RunStats(executor=opts.executor)
    console = console or Console(stderr=True)
    done = finished(p, results) if not force else set()
    todo = [i for i in p.ids if i not in done]
    executor = make_executor(p, opts, results)
    if todo and not dry_run and hasattr(executor, "start"):  # local workers import while the checks run, the
        _start_workers(executor, results, len(todo), preflight)  # base pretrains and the data builds
    elif preflight:
        preflight()
    if dry_run:
        _show_dry_run(p, todo, executor, opts.executor, results, console)
        return stats
    for sub in ("runs", "data"):
        (results / sub).mkdir(parents=True, exist_ok=True)
    clean_partial(results)
    with store.writer(db) as con:
        store.adopt_finished(con, p.matrix.name, results, done, p.ids)
        store.record_analysis(con, p.matrix.name, asdict(p.matrix.analysis))  # its primary family
    if not todo:
        console.print(f"[green]all {len(p.ids)} cells of {p.matrix.name} are finished[/] (use --force to rerun)")
        return stats
    try:
        _build_models(p, set(todo), results, stats, console)
        jobs = jobs_for(p, set(todo), executor.info.threads)
        _build_data_beside(p, set(todo), results, db, stats, console, executor, [j for j in jobs if j.kind == "base"])
        console.print(f"{p.matrix.name}: {len(jobs)} of {len(p.ids)} cells to run ({len(done)} finished) on the "
                      f"{opts.executor} executor", highlight=False)
        _run_jobs(p, executor, jobs, results, db, stats, console)
    finally:
        if hasattr(executor, "close"):
            executor.close()
    stats.wall_seconds = time.perf_counter() - t_start
    with store.writer(db) as con:
        store.record_matrix_run(con, p.matrix.name, opts.executor, stats.cells_run, stats.failed, stats.workers,
                                stats.wall_seconds, stats.compute_seconds, stats.overhead_seconds, stats.parts,
                                stats.compute, stats.lost_seconds)
    return stats


def _start_workers(executor, results: Path, n_jobs: int, preflight: Callable[[], None] | None) -> None:
    """Start the executor's workers, then run the preflight check: their imports (~7 s of a core each) overlap it.
    A refusal stops the workers and removes the log folder they were given, if this created it."""
    created = next((d for d in reversed([results / "logs", *(results / "logs").parents]) if not d.exists()), None)
    executor.start(results, n_jobs)
    try:
        if preflight:
            preflight()
    except BaseException:
        executor.abort()
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _show_dry_run(p: Plan, todo: list[str], executor: Executor, name: str, results: Path, console) -> None:
    jobs = jobs_for(p, set(todo), executor.info.threads)
    console.print(f"{p.matrix.name}: {len(jobs)} of {len(p.ids)} cells to run on the {name} executor "
                  f"(dry run: nothing runs)", highlight=False)
    for job in jobs:
        console.print(f"  {job.id}  {job.label}", highlight=False)
    if jobs and hasattr(executor, "describe"):
        console.print(executor.describe(jobs, results), highlight=False, markup=False, soft_wrap=True)


def _build_models(p: Plan, todo: set[str], results: Path, stats: RunStats, console) -> None:
    """The base models the pending cells need, built once and cached."""
    t = time.perf_counter()
    for ref in {p.refs[c.model] for c in p.cells + p.bases if c.id in todo}:
        models.model_path(ref, results, log=console.print)
    stats.compute["base pretraining"] = time.perf_counter() - t  # compute (nothing when cached)


def _build_data_beside(p: Plan, todo: set[str], results: Path, db: Path, stats: RunStats, console, executor,
                       bases: list) -> None:
    """Build the data sets while an executor that can begin jobs early (the local one) scores the base models: they
    need no data, and the data pipeline runs on one core (the demo's: 1.1-2 s; its base's scoring: 3-4 s). When the
    build fails, the base jobs are stopped and their half-written folders removed: nothing is left of the run."""
    if not (bases and hasattr(executor, "begin")):
        _build_data(p, todo, results, db, stats, console)
        return
    executor.begin(bases)
    try:
        _build_data(p, todo, results, db, stats, console)
    except BaseException:
        executor.abort()
        clean_partial(results)
        raise


def _build_data(p: Plan, todo: set[str], results: Path, db: Path, stats: RunStats, console) -> None:
    """The data sets the pending cells need, built once and cached; their cards go into the database."""
    t = time.perf_counter()
    arms = sorted({c.arm for c in p.cells if c.id in todo})
    cached = {arm for arm in arms if (dataset_dir(results, p.recipes[arm].id) / "card.json").exists()}
    built = build(p.recipes, results, arms, log=console.print) if arms else {}
    with store.writer(db) as con:
        for folder in built.values():
            store.ingest_dataset(con, folder)
    stats.compute["curation"] = _curation_compute([f for arm, f in built.items() if arm not in cached])
    stats.warnings += audit_contamination(p, built, results, db)
    stats.parts["data"] = time.perf_counter() - t - stats.compute["curation"]


def audit_contamination(p: Plan, built: dict[str, Path], results: Path, db: Path) -> list[str]:
    """Every built arm's training rows against the documents of the tasks the matrix evaluates (word 13-grams),
    into the contamination table; returns a warning per arm x task with overlapping rows. The documents are cached
    by the tasks' fingerprint, so the audit costs the n-gram search alone (8,000 short rows: ~0.3 s)."""
    from harness.data.curate.contamination import Index, audit
    from harness.eval.tasks import documents, evaluated_tasks

    if not built:
        return []
    found, include = evaluated_tasks(p.matrix.eval)
    groups = dict(found)
    index = Index(documents(list(groups), include))
    rows = [{"arm": arm, "dataset_id": folder.name, **a} for arm, folder in built.items()
            for a in audit(load_rows(results, folder.name), index, groups)]
    with store.writer(db) as con:
        store.record_contamination(con, p.matrix.name, rows)
    return [f"arm {r['arm']}: {r['overlapping_rows']} of {r['train_rows']:,} training rows overlap {r['task']} "
            f"({r['overlapping_docs']} of its {r['eval_docs']} documents; word {r['n']}-grams): see the "
            f"contamination table" for r in rows if r["overlapping_rows"]]


def _run_jobs(p: Plan, executor: Executor, jobs: list, results: Path, db: Path, stats: RunStats, console) -> None:
    """The executor runs the jobs; each finished cell is ingested as it is reported and shown in the progress view."""
    cell_compute = cell_prep = ingest_s = 0.0
    stats.cells_run = len(jobs)
    info = executor.info
    # an engine's own messages (Ray's, submitit's) go to its log file; inside the view: Live would show them
    engine = engine_output(results / "logs" / f"{info.name}.log", info.loggers, console) if info.loggers \
        else contextlib.nullcontext()
    with ProgressView(console, len(jobs)) as view, engine:
        for ev in executor.run(jobs, results):
            if not isinstance(ev, Finished):
                view.update(ev)
                continue
            t = time.perf_counter()
            folder = ev.folder or cell.write_failed(ev.job, results, ev.error)
            with store.writer(db) as con:
                row = store.ingest_run(con, folder, p.matrix.name)
                learn, forget = store.cell_scores(con, ev.job.id)
            ingest_s += time.perf_counter() - t
            cell_compute += (row.get("train_seconds") or 0) + (row.get("eval_seconds") or 0)
            cell_prep += row.get("prep_seconds") or 0
            stats.failed += row["status"] != "ok"
            view.finished(ev, row, learn, forget)
    stats.workers = max(1, executor.info.slots)
    stats.compute["cells"] = cell_compute / stats.workers
    stats.parts.update(executor.info.parts)
    stats.lost_seconds = executor.info.lost_seconds
    stats.parts["model load + encode"] = cell_prep / stats.workers
    stats.parts["ingest (overlapped)"] = ingest_s


def ingest(db: Path, results: Path, run_ids: list[str], matrix: str) -> None:
    with store.writer(db) as con:
        for rid in run_ids:
            store.ingest_run(con, results / "runs" / rid, matrix)
