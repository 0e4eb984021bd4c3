"""`harness matrix run`: plan the cells, build what they need, run them in worker processes, ingest results.

The parent process is the single DuckDB writer: workers only write files under results/runs/, and the parent ingests
each finished cell in one transaction. A rerun skips every cell whose folder says `ok` (ingesting it first if a kill
came between the worker's rename and the ingest).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import __version__, models, store
from harness.data.build import build
from harness.data.cards import short_params
from harness.data.recipe import Recipe, resolve_recipes
from harness.data.sources import validate_sources
from harness.eval.tasks import resolve_tasks, task_fingerprint
from harness.spec import BaseEval, Cell, Matrix, SpecError, expand


@dataclass
class Plan:
    matrix: Matrix
    cells: list[Cell]
    bases: list[BaseEval]
    recipes: dict[str, Recipe]
    refs: dict[str, models.ModelRef]


def plan(m: Matrix) -> Plan:
    """Resolve models, data recipes and tasks into cells; raises SpecError on anything unknown."""
    refs = {}
    for i, name in enumerate(m.models):
        try:
            refs[name] = models.resolve(name)
        except models.ModelError as e:
            raise SpecError(f"models.{i}: {e}") from None
    m = resolve_tasks(m)
    recipes = resolve_recipes(m)
    validate_sources([r.source for r in recipes.values()])  # a bad row stops here, before any model is built
    cells, bases = expand(m, {k: r.fingerprint for k, r in refs.items()}, {k: r.id for k, r in recipes.items()},
                          task_fingerprint(m.eval.learn + m.eval.forget, m.eval.include))
    return Plan(m, cells, bases, recipes, refs)


def cell_status(results: Path, run_id: str) -> str | None:
    path = results / "runs" / run_id / "result.json"
    return json.loads(path.read_text())["status"] if path.exists() else None


def _label(job: dict) -> str:
    c = job["config"]
    return f"base {c['model']}" if job["kind"] == "base" else f"{c['method']}/{c['arm']}/s{c['seed']}"


def jobs_for(p: Plan, ids: set[str], threads: int) -> list[dict]:
    jobs = [{"id": b.id, "kind": "base", "config": b.config(), "threads": threads, "harness_version": __version__}
            for b in p.bases if b.id in ids]
    jobs += [{"id": c.id, "kind": "sft", "config": c.config(), "lr": c.lr, "threads": threads,
              "harness_version": __version__} for c in p.cells if c.id in ids]
    return jobs


class Worker:
    def __init__(self, results: Path, log_path: Path, events: queue.Queue, index: int):
        env = {**os.environ, **models.offline_env(), "TOKENIZERS_PARALLELISM": "false"}
        self.log = log_path.open("a")
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.worker", str(results)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1, env=env)
        self.index = index
        threading.Thread(target=self._read, args=(events,), daemon=True).start()

    def _read(self, events: queue.Queue) -> None:
        for line in self.proc.stdout:
            events.put((self.index, json.loads(line)))
        events.put((self.index, {"event": "exit", "code": self.proc.wait()}))

    def send(self, job: dict) -> None:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()
        self.log.close()


def ingest(db: Path, results: Path, run_ids: list[str], matrix: str) -> None:
    with store.writer(db) as con:
        for rid in run_ids:
            store.ingest_run(con, results / "runs" / rid, matrix)


def clean_partial(results: Path) -> None:
    """Folders a killed worker left half-written (never renamed into place)."""
    for d in list((results / "runs").glob(".*.tmp-*")) + list((results / "data").glob(".*.tmp-*")):
        shutil.rmtree(d, ignore_errors=True)


@dataclass
class RunStats:
    """Where a matrix run's wall time went. Compute is what the cells did (training and evaluation, shared out over
    the workers) and pretraining a base; overhead is the rest: process start and imports, data builds, model loading
    and encoding, ingest, and workers idle while the last cells finish."""
    cells_run: int = 0
    failed: int = 0
    workers: int = 0
    wall_seconds: float = 0.0
    compute_seconds: float = 0.0
    parts: dict = field(default_factory=dict)  # overhead parts (wall-clock seconds)

    @property
    def overhead_seconds(self) -> float:
        return max(0.0, self.wall_seconds - self.compute_seconds)

    def line(self) -> str:
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in self.parts.items() if v >= 0.05)
        share = self.overhead_seconds / self.wall_seconds if self.wall_seconds else 0.0
        return (f"harness overhead: {self.overhead_seconds:.1f}s of {self.wall_seconds:.1f}s wall ({share:.1%}); "
                f"compute {self.compute_seconds:.1f}s" + (f"; of the overhead: {parts}" if parts else ""))


def execute(p: Plan, results: Path, db: Path, force: bool = False, workers: int = 0, console=None) -> RunStats:
    """Run every unfinished cell; returns where the time went (and how many cells failed)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    t_start = time.perf_counter()
    stats = RunStats()
    console = console or Console(stderr=True)
    (results / "runs").mkdir(parents=True, exist_ok=True)
    (results / "data").mkdir(parents=True, exist_ok=True)
    clean_partial(results)
    all_ids = [b.id for b in p.bases] + [c.id for c in p.cells]
    finished = {i for i in all_ids if cell_status(results, i) == "ok"} if not force else set()
    with store.writer(db) as con:
        stale = [i for i in finished if i not in store.ingested_ok(con, list(finished))]
        for rid in stale:
            store.ingest_run(con, results / "runs" / rid, p.matrix.name)
        for rid in finished:  # cells shared with another matrix belong to this one too
            con.execute("INSERT OR IGNORE INTO matrix_cells VALUES (?, ?)", [p.matrix.name, rid])
        # the matrix is what its file says now: cells of an edited config leave it (their runs stay in `runs`, and
        # come back when the config does), so the summary shows one row per cell
        con.execute(f"DELETE FROM matrix_cells WHERE matrix = ? AND run_id NOT IN ({', '.join('?' * len(all_ids))})",
                    [p.matrix.name, *all_ids])
    todo = [i for i in all_ids if i not in finished]
    if not todo:
        console.print(f"[green]all {len(all_ids)} cells of {p.matrix.name} are finished[/] (use --force to rerun)")
        return stats

    # what the pending cells need: base models and data sets, built once and cached
    t = time.perf_counter()
    for ref in {p.refs[c.model] for c in p.cells + p.bases if c.id in todo}:
        models.model_path(ref, results, log=console.print)
    stats.compute_seconds += time.perf_counter() - t  # pretraining a base is compute (nothing when cached)
    t = time.perf_counter()
    arms = sorted({c.arm for c in p.cells if c.id in todo})
    built = build(p.recipes, results, arms, log=console.print) if arms else {}
    with store.writer(db) as con:
        for folder in built.values():
            store.ingest_dataset(con, folder)
    stats.parts["data"] = time.perf_counter() - t

    n_workers = workers or default_workers(p)
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    jobs = jobs_for(p, set(todo), threads)
    n_workers = min(n_workers, len(jobs))
    console.print(f"{p.matrix.name}: {len(jobs)} of {len(all_ids)} cells to run "
                  f"({len(finished)} finished) on {n_workers} worker(s) x {threads} thread(s)")
    events: queue.Queue = queue.Queue()
    logs = results / "logs"
    logs.mkdir(exist_ok=True)
    t_spawn = time.perf_counter()
    pool = [Worker(results, logs / f"worker-{i}.log", events, i) for i in range(n_workers)]
    pending = list(jobs)
    current: dict[int, dict] = {}
    cell_compute = cell_prep = ingest_s = 0.0
    stats.workers, stats.cells_run = n_workers, len(jobs)
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        overall = progress.add_task("cells", total=len(jobs), info="")
        lanes = {w.index: progress.add_task(f"  worker {w.index}", total=None, info="starting", visible=True)
                 for w in pool}
        alive = len(pool)
        try:
            while alive:
                idx, ev = events.get()
                kind = ev["event"]
                if kind in ("ready", "done"):
                    if kind == "ready":
                        stats.parts["worker start"] = time.perf_counter() - t_spawn  # the last to be ready
                    done = current.pop(idx) if kind == "done" else None
                    if pending:  # the next job first: the worker computes while this process ingests
                        current[idx] = pending.pop(0)
                        pool[idx].send(current[idx])
                        progress.update(lanes[idx], description=f"  {_label(current[idx])}", completed=0,
                                        total=None, info="loading")
                    else:
                        progress.update(lanes[idx], description=f"  worker {idx}", info="idle", visible=False)
                        pool[idx].proc.stdin.close()
                    if done:
                        t = time.perf_counter()
                        ingest(db, results, [done["id"]], p.matrix.name)
                        ingest_s += time.perf_counter() - t
                        row = json.loads((results / "runs" / done["id"] / "result.json").read_text())
                        cell_compute += (row.get("train_seconds") or 0) + (row.get("eval_seconds") or 0)
                        cell_prep += row.get("prep_seconds") or 0
                        progress.advance(overall)
                        if ev["status"] != "ok":
                            stats.failed += 1
                            console.print(f"[red]cell {done['id']} ({_label(done)}) failed:[/] {ev['error']}")
                elif kind == "step":
                    progress.update(lanes[idx], completed=ev["step"], total=ev["total"], info=f"loss {ev['loss']:.3f}")
                elif kind == "eval":
                    progress.update(lanes[idx], info="evaluating")
                elif kind == "exit":
                    alive -= 1
                    if idx in current:  # died mid-job without reporting: a crash (see its log)
                        job = current.pop(idx)
                        stats.failed += 1
                        console.print(f"[red]worker {idx} exited (code {ev['code']}) during {_label(job)}; "
                                      f"see {logs / f'worker-{idx}.log'}[/]")
        finally:
            for w in pool:
                if w.proc.poll() is None and w.proc.stdin and not w.proc.stdin.closed:
                    w.proc.stdin.close()
            for w in pool:
                w.close()
    stats.wall_seconds = time.perf_counter() - t_start
    stats.compute_seconds += cell_compute / n_workers
    stats.parts["model load + encode"] = cell_prep / n_workers
    stats.parts["ingest (overlapped)"] = ingest_s
    with store.writer(db) as con:
        con.execute("INSERT INTO matrix_runs VALUES (?, current_timestamp, ?, ?, ?, ?, ?, ?, ?)",
                    [p.matrix.name, stats.cells_run, stats.failed, stats.workers, stats.wall_seconds,
                     stats.compute_seconds, stats.overhead_seconds, json.dumps(stats.parts)])
    return stats


def default_workers(p: Plan) -> int:
    """Small models run best one process per core (per-op overhead dominates); large ones share all cores."""
    small = all(r.kind == "builtin" for r in p.refs.values())
    return max(1, min(2, os.cpu_count() or 1)) if small else 1


def summary_rows(db: Path, matrix: str) -> tuple[list[str], list[tuple]]:
    return store.query(db, f"""
        SELECT method, arm, seed, round(learn, 3) AS learn, round(learn_gain, 3) AS learn_vs_base,
               round(forget, 3) AS forget, examples, steps, round(train_seconds, 1) AS train_s, status
        FROM summary WHERE matrix = '{matrix.replace("'", "''")}'
        ORDER BY method_kind = 'base' DESC, method, arm, seed""")


def plan_table(p: Plan, results: Path) -> list[dict]:
    rows = [{"id": b.id, "model": b.model, "method": "base", "arm": "-", "seed": "-",
             "status": cell_status(results, b.id) or "pending"} for b in p.bases]
    rows += [{"id": c.id, "model": c.model, "method": f"{c.method} ({c.method_cfg.kind})", "arm": c.arm,
              "seed": c.seed, "status": cell_status(results, c.id) or "pending"} for c in p.cells]
    return rows


def recipe_lines(p: Plan) -> list[str]:
    out = []
    for arm, r in p.recipes.items():
        src = r.source["kind"] + (f" ({r.source['size']:,} examples)" if "size" in r.source else f" {r.source.get('path')}")
        steps = " -> ".join(n + (f"({short_params(prm)})" if prm else "") for n, prm in r.steps) or "as is"
        out.append(f"{arm}: {src} -> {steps}   [data set {r.id}]")
    return out

