"""`harness show`, `harness runs`, `harness export`: one run in full, the runs in a table, files other tools read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from harness.cli.common import DbOpt, ResultsOpt, db_path, fail, out, print_table


def runs_cmd(matrix: Optional[str] = typer.Option(None, help="Only runs of this matrix."),
             model: Optional[str] = typer.Option(None, help="Only this model."),
             method: Optional[str] = typer.Option(None, help="Only this method label (base: untrained models)."),
             arm: Optional[str] = typer.Option(None, help="Only this data arm."),
             seed: Optional[int] = typer.Option(None, help="Only this seed."),
             status: Optional[str] = typer.Option(None, help="ok, failed or running."),
             limit: int = typer.Option(50, help="At most this many runs, newest first."),
             results: Path = ResultsOpt, db: Optional[Path] = DbOpt) -> None:
    """List the runs in the database (newest first) with their learn and forget scores."""
    from harness.store import export

    path = db_path(db, results)
    if not path.exists():
        raise fail(f"{path}: no database yet (run `harness matrix run` or `harness eval` first)")
    cols, rows = export.list_runs(path, {"matrix": matrix, "model": model, "method": method, "arm": arm,
                                         "seed": seed, "status": status}, limit)
    print_table(cols, rows, title=f"{len(rows)} run(s); details: harness show RUN_ID")


def show_cmd(run_id: str = typer.Argument(..., help="A run id (or a unique prefix of one)."),
             results: Path = ResultsOpt, db: Optional[Path] = DbOpt) -> None:
    """One run: its config, data set, scores with 95% intervals, cost, and the plain `lm_eval` command lines that
    reproduce its stored learn and forget scores."""
    import yaml

    from harness.store import export

    path = db_path(db, results)
    try:
        run = export.find_run(path, run_id)
    except (export.RunNotFound, FileNotFoundError) as e:
        raise fail(str(e)) from None
    rid = run["run_id"]
    out.print(f"[bold]run {rid}[/]  {run['kind']}  {run['model']}  {run['method'] or ''} {run['arm'] or ''} "
              f"seed {run['seed']}  status {run['status']}  matrices: {', '.join(run['matrices']) or '-'}",
              highlight=False)
    if run["error"]:
        out.print(f"error: {run['error']}", highlight=False)
    out.print("[bold]config[/]")
    config = {k: v for k, v in run["config"].items() if k not in ("model_fingerprint",)}
    out.print(yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=110).rstrip(), highlight=False,
              markup=False)
    if run["dataset_id"]:
        card = results / "data" / run["dataset_id"] / "card.json"
        out.print(f"[bold]data set[/] {run['dataset_id']}: `harness data show {run['dataset_id']}`  (card: {card})",
                  highlight=False)
    cols, rows = export.scores(path, rid)
    print_table(cols, rows, title="scores (interval: value +- 1.96 x lm-eval's stderr over examples)")
    c = export.cost(path, rid)
    if c:
        out.print("[bold]cost[/] " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in c.items()
            if v is not None and k not in ("run_id", "kind", "model", "method", "arm", "seed")), highlight=False)
    fams, cols, rows = export.primary(path, run)
    for line in fams:
        out.print(f"[bold]analysis[/] {line}", highlight=False, soft_wrap=True)
    if rows:
        print_table(cols, rows, title="primary comparisons of this run's method and arm (harness report's last "
                                      "analysis; p_holm: within the primary family)")
    out.print(f"[bold]time[/] prep {run['prep_seconds'] or 0:.1f}s, train {run['train_seconds'] or 0:.1f}s, "
              f"eval {run['eval_seconds'] or 0:.1f}s; env: {json.dumps(run['env'])}", highlight=False, soft_wrap=True)
    out.print("[bold]reproduce with lm-eval[/] (from any directory)")
    try:
        for group, cmd in export.lm_eval_commands(run, results).items():
            out.print(f"# {group} tasks", highlight=False)
            out.print(cmd, highlight=False, soft_wrap=True, markup=False)
    except export.RunNotFound as e:
        out.print(f"  not possible: {e}", highlight=False)


def export_cmd(directory: Path = typer.Argument(..., help="Folder to write into."),
               fmt: str = typer.Option("parquet", "--format", help="parquet: every table and view as NAME.parquet; "
                                       "lm-eval: RUN_ID/results_<time>.json per run, lm-eval's results format."),
               run: Optional[list[str]] = typer.Option(None, "--run", help="Only these runs (lm-eval format; "
                                                        "repeatable)."),
               results: Path = ResultsOpt, db: Optional[Path] = DbOpt) -> None:
    """Write the results database in formats other tools open: Parquet (pandas, polars, Spark, DuckDB) or lm-eval's
    results JSON (tools that read lm-eval output)."""
    from harness.store import export

    path = db_path(db, results)
    if not path.exists():
        raise fail(f"{path}: no database yet (run `harness matrix run` or `harness eval` first)")
    if fmt == "parquet":
        paths = export.to_parquet(path, directory)
    elif fmt == "lm-eval":
        try:
            paths = export.to_lm_eval(path, directory, [export.find_run(path, r)["run_id"] for r in run] if run
                                      else None)
        except export.RunNotFound as e:
            raise fail(str(e)) from None
    else:
        raise fail(f"--format: expected parquet or lm-eval, got {fmt!r}")
    out.print(f"{len(paths)} file(s) in {directory}", highlight=False)
