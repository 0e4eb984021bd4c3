"""`harness matrix plan | run | defaults`: a matrix's cells, running them, and every key's default."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer

from harness.cli.common import DbOpt, IncludeOpt, ResultsOpt, db_path, err, fail, input_errors, out, print_table


def _load_plan(file: Optional[Path], include: list[Path] = ()):
    from harness.run.plan import plan
    from harness.spec import load_matrix

    try:
        m = load_matrix(file)
        m = dataclasses.replace(m, eval=dataclasses.replace(m.eval, include=m.eval.include + [str(d) for d in include]))
        return plan(m)
    except input_errors() as e:
        raise fail(str(e)) from None


def matrix_plan(file: Optional[Path] = typer.Argument(None, help="Matrix YAML or built-in preset (default: demo)."),
                device_memory_gb: Optional[float] = typer.Option(None, "--device-memory-gb", help="Plan for GPUs of "
                                                                 "this many GiB (default: the matrix's "
                                                                 "run.device_memory_gb, else this machine's)."),
                include: list[Path] = IncludeOpt, results: Path = ResultsOpt) -> None:
    """Print the expanded cells, their ids and status, the data recipes, what is matched between cells, and each
    cell's estimated peak memory per device; exit 2 when a cell cannot fit its device."""
    from harness.run import plan
    from harness.spec import matched_description

    p = _load_plan(file, include)
    rows = plan.plan_table(p, results)
    print_table(["cell id", "model", "method", "arm", "seed", "status"], [tuple(r.values()) for r in rows],
                title=f"matrix {p.matrix.name}: {len(rows)} cells ({len(p.cells)} trained + {len(p.bases)} base)")
    out.print("[bold]data arms[/]")
    for line in plan.recipe_lines(p):
        out.print(f"  {line}", highlight=False)
    out.print("[bold]matched between cells[/]")
    for line in matched_description(p.matrix):
        out.print(f"  {line}", highlight=False)
    out.print("[bold]analysis[/] (the matrix's `analysis:` section)")
    for line in family_lines(p.matrix):
        out.print(f"  {line}", highlight=False)
    _memory_plan(p, device_memory_gb or p.matrix.run.device_memory_gb)


def _memory_plan(p, device_memory_gb: float | None) -> None:
    """The memory table of `matrix plan`; a cell that cannot fit ends the command with one line and exit code 2."""
    from harness.run import plan

    where = plan.DeviceMemory.here(device_memory_gb)
    cells = plan.memory_plan(p, where)
    gib = 2**30
    shared = "" if where.device == "cuda" else ", shared by all the processes of a cell"
    rows = []
    for m in cells:
        t, e = m.cell.train, m.estimate
        rows.append((m.cell.id, m.cell.model, f"{m.cell.method} ({m.cell.method_cfg.kind})",
                     f"{t.strategy} x {t.devices}", "yes" if t.gradient_checkpointing else "no",
                     f"{t.batch_size // (t.devices * t.grad_accum)} x {t.max_length}",
                     *(f"{v / gib:.2f}" for v in (e.weights, e.gradients, e.optimizer, e.activations, e.runtime,
                                                   e.total)), "yes" if m.fits else "NO"))
    print_table(["cell id", "model", "method", "strategy", "checkpointing", "micro-batch", "weights", "grads",
                 "AdamW", "activations", "runtime", "per device", "fits"], rows,
                title=f"memory plan: estimated peak GiB per device ({where.device}; {where.source}: "
                      f"{where.bytes / gib:.1f} GiB{shared})")
    _refuse_unfit(p, cells)


def _refuse_unfit(p, cells) -> None:
    """One line and exit code 2 when a cell of the memory plan cannot fit its device."""
    from harness.run import plan

    bad = [m for m in cells if not m.fits]
    if bad:
        raise fail(plan.refusal(bad[0], len(bad) - 1))


def _print_verdicts(path: Path, m) -> None:
    """The primary family's verdicts (the numbers `harness report` shows, from the same analysis)."""
    from harness import store
    from harness.analysis import stats

    with store.reader(path) as con:
        s = stats.load(con, m.name)
    if (s.runs["kind"] == "sft").sum() < 2:
        return
    t = stats.analyse(s, stats.Options(), m.analysis)
    rows = stats.primary_verdicts(t.comparisons)
    if rows:
        print_table(stats.VERDICT_COLUMNS, rows, title=f"verdicts: {t.family}")
    for e in [] if t.exchange is None else t.exchange.itertuples():
        out.print(f"exchange rate, {e.model} {e.method}: {e.statement}", highlight=False)


def family_lines(m) -> list[str]:
    """The primary family and the exchange rate the report will compute, before anything runs."""
    from harness.analysis import stats

    fam = stats.of_matrix(m)
    lines = [fam.describe(len(m.models))]
    dose = [a for a, i in stats.arms_from_spec(m).items() if i.dose]
    if m.analysis.exchange and len(dose) >= 2:
        lines.append(f"exchange rate on {m.analysis.exchange}: each curated arm against the bulk series "
                     f"{', '.join(dose)} (score vs ln(examples), inverted)")
    return lines


def matrix_run(file: Optional[Path] = typer.Argument(None, help="Matrix YAML or built-in preset (default: demo)."),
               force: bool = typer.Option(False, "--force", help="Rerun finished cells too."),
               executor: Optional[str] = typer.Option(None, "--executor", help="Where cells run: local (worker "
                                                      "processes here), ray or slurm (default: the matrix's "
                                                      "run.executor, env HARNESS_EXECUTOR, else local)."),
               workers: Optional[int] = typer.Option(None, "--workers", help="Cells at once (0: automatic)."),
               address: Optional[str] = typer.Option(None, "--address", help="ray: a running cluster's address "
                                                     "(default: start Ray on this machine)."),
               retries: Optional[int] = typer.Option(None, "--retries", help="ray: reruns of a cell whose worker "
                                                     "died, before it is recorded failed (default 2)."),
               gpus: Optional[int] = typer.Option(None, "--gpus-per-cell", help="GPUs per cell (ray: default 1 "
                                                  "when the cluster has GPUs; slurm: default 0)."),
               partition: Optional[str] = typer.Option(None, "--partition", help="slurm: the partition."),
               account: Optional[str] = typer.Option(None, "--account", help="slurm: the account."),
               time_minutes: Optional[int] = typer.Option(None, "--time", help="slurm: minutes per cell (default "
                                                          "120)."),
               dry_run: bool = typer.Option(False, "--dry-run", help="Show the pending cells (and, for slurm, the "
                                            "sbatch script) without running anything."),
               include: list[Path] = IncludeOpt, results: Path = ResultsOpt, db: Optional[Path] = DbOpt) -> None:
    """Train and evaluate every unfinished cell, ingest the results, print the summary."""
    import time

    from harness import store
    from harness.run import plan, runner

    t0 = time.perf_counter()
    p = _load_plan(file, include)
    path = db_path(db, results)
    try:
        opts = runner.run_options(p, executor, workers=workers, address=address, retries=retries, gpus=gpus,
                                  partition=partition, account=account, time_minutes=time_minutes)
        def memory_check() -> None:
            if opts.executor == "local" or opts.device_memory_gb:  # elsewhere the devices are not known from here
                _refuse_unfit(p, plan.memory_plan(p, plan.DeviceMemory.here(opts.device_memory_gb)))

        stats = runner.execute(p, results, path, opts, force=force, dry_run=dry_run, console=err,
                               preflight=memory_check)
    except input_errors() as e:
        raise fail(str(e)) from None
    if dry_run:
        return
    cols, rows = store.summary_rows(path, p.matrix.name)
    print_table(cols, rows, title=f"summary of {p.matrix.name} (learn: mean exact match on learn tasks; "
                                  f"forget: relative loss of the base's forget-task scores)")
    _print_verdicts(path, p.matrix)
    if stats.cells_run:
        out.print(stats.line(), highlight=False)
    for line in stats.warnings:
        out.print(f"[yellow]contamination: {line}[/]", highlight=False)
    out.print(f"database: {path.resolve()}  ({time.perf_counter() - t0:.1f}s)", highlight=False)
    if stats.failed:
        raise fail(f"{stats.failed} cell(s) failed; their errors are in the runs table (status = 'failed')", code=1)


def matrix_defaults() -> None:
    """Print every matrix key with its default value (the dataclasses in harness/spec/matrix.py document each)."""
    import yaml

    from harness.spec import Matrix

    out.print(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(Matrix()))), sort_keys=False), highlight=False)
