"""The `harness` command: thin typer wrappers over the plain functions of each stage (this module: matrix, data,
base, tasks, models, eval, bench, sql, report, check; harness/cli/runs.py: show, runs, export).

Heavy libraries (torch, transformers, lm-eval) are imported only by the commands that need them, so that planning,
`harness sql` and a rerun of a finished matrix start in well under a second.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from harness.models import set_worker_env  # light: no torch
from harness.spec import Eval

set_worker_env()  # offline unless HARNESS_ONLINE=1
# the libraries' own bars ("Loading weights", "Writing model shards", "Generating test split") would interleave
# with the harness's progress lines; read at import, so set before any of them is imported (workers inherit it)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

app = typer.Typer(help="Fine-tune language models under matched budgets and measure what they learn and forget.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
matrix_app = typer.Typer(help="Plan and run a matrix of base model x method x data arm x seed.", no_args_is_help=True)
base_app = typer.Typer(help="Build the project's own tiny base models.", no_args_is_help=True)
tasks_app = typer.Typer(help="The lm-eval tasks in tasks/.", no_args_is_help=True)
data_app = typer.Typer(help="Build and inspect curated data sets outside a matrix.", no_args_is_help=True)
app.add_typer(matrix_app, name="matrix")
app.add_typer(data_app, name="data")
app.add_typer(base_app, name="base")
app.add_typer(tasks_app, name="tasks")

# wide tables when piped (a terminal sets its own width)
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

ResultsOpt = typer.Option(Path(os.environ.get("HARNESS_RESULTS", "results")), "--results",
                          help="Folder for runs, data sets and the database (env HARNESS_RESULTS); built bases and "
                               "converted models live in the shared cache (env HARNESS_CACHE, default "
                               "~/.cache/harness).")
DbOpt = typer.Option(None, "--db", help="DuckDB file (env HARNESS_DB; default RESULTS/harness.duckdb).")
IncludeOpt = typer.Option([], "--include", help="A folder of your own lm-eval task YAMLs (repeatable; lm-eval's "
                                                "--include_path); task YAML paths work in task lists too.")


def fail(msg: str, code: int = 2) -> typer.Exit:
    from rich.markup import escape

    err.print(f"[red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)  # messages quote [brackets]
    return typer.Exit(code)


def _db(db: Path | None, results: Path) -> Path:
    return Path(db or os.environ.get("HARNESS_DB") or results / "harness.duckdb")


def _input_errors():
    from harness.data.curate import RecipeError
    from harness.models import ModelError
    from harness.run.jobs import ExecutorError
    from harness.spec import SpecError

    return SpecError, ModelError, RecipeError, ExecutorError


@contextlib.contextmanager
def _fd_to(fd: int, f):
    """Point a file descriptor (2: what C code and subprocesses such as git write to as well) at a file."""
    sys.stderr.flush()
    saved = os.dup(fd)
    os.dup2(f.fileno(), fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)
        os.close(saved)


def print_table(columns: list[str], rows: list[tuple], title: str | None = None, console: Console = out) -> None:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in r))
    console.print(table)


def _load_plan(file: Optional[Path], include: list[Path] = ()):
    from harness.run.plan import plan
    from harness.spec import load_matrix

    try:
        m = load_matrix(file)
        m = dataclasses.replace(m, eval=dataclasses.replace(m.eval, include=m.eval.include + [str(d) for d in include]))
        return plan(m)
    except _input_errors() as e:
        raise fail(str(e)) from None


@matrix_app.command("plan")
def matrix_plan(file: Optional[Path] = typer.Argument(None, help="Matrix YAML or built-in preset (default: demo)."),
                include: list[Path] = IncludeOpt, results: Path = ResultsOpt) -> None:
    """Print the expanded cells, their ids and status, the data recipes, and what is matched between cells."""
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


@matrix_app.command("run")
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
    from harness.run import runner

    t0 = time.perf_counter()
    p = _load_plan(file, include)
    path = _db(db, results)
    try:
        opts = runner.run_options(p, executor, workers=workers, address=address, retries=retries, gpus=gpus,
                                  partition=partition, account=account, time_minutes=time_minutes)
        stats = runner.execute(p, results, path, opts, force=force, dry_run=dry_run, console=err)
    except _input_errors() as e:
        raise fail(str(e)) from None
    if dry_run:
        return
    cols, rows = store.summary_rows(path, p.matrix.name)
    print_table(cols, rows, title=f"summary of {p.matrix.name} (learn: mean exact match on learn tasks; "
                                  f"forget: relative loss of the base's forget-task scores)")
    if stats.cells_run:
        out.print(stats.line(), highlight=False)
    out.print(f"database: {path.resolve()}  ({time.perf_counter() - t0:.1f}s)", highlight=False)
    if stats.failed:
        raise fail(f"{stats.failed} cell(s) failed; their errors are in the runs table (status = 'failed')", code=1)


@matrix_app.command("defaults")
def matrix_defaults() -> None:
    """Print every matrix key with its default value (the dataclasses in harness/spec.py document each)."""
    import yaml

    from harness.spec import Matrix

    out.print(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(Matrix()))), sort_keys=False), highlight=False)


@base_app.command("build")
def base_build(preset: str = typer.Option("tiny", help="Base recipe: tiny (default world) or micro (tests)."),
) -> None:
    """Train the tokenizer and pretrain the tiny base (cached by content hash under $HARNESS_CACHE/bases/)."""
    from harness.models.pretrain import PRESETS, build_base

    if preset not in PRESETS:
        raise fail(f"--preset: unknown base {preset!r}; expected one of {', '.join(PRESETS)}")
    path = build_base(PRESETS[preset], log=err.print)
    out.print(str(path))


@tasks_app.command("build")
def tasks_build() -> None:
    """Regenerate tasks/data/*.jsonl from the skills world (deterministic)."""
    from harness.eval.tasks import write_task_data

    for p in write_task_data():
        out.print(str(p))


@data_app.command("build")
def data_build(recipe: Path = typer.Argument(..., help="Recipe YAML ({source, steps}) or a matrix file (with --arm)."),
               arm: Optional[str] = typer.Option(None, "--arm", help="The arm to build, when RECIPE is a matrix."),
               skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count malformed input rows "
                                                                       "instead of stopping at the first."),
               results: Path = ResultsOpt, db: Optional[Path] = DbOpt) -> None:
    """Build one data set (cached by content under RESULTS/data/<id>/), record its provenance, print its card."""
    from harness import store
    from harness.data.build import build
    from harness.data.recipe import load_recipe

    try:
        recipes, arm = load_recipe(recipe, arm, skip_bad)
        built = build(recipes, results, [arm], log=err.print)
    except _input_errors() as e:
        raise fail(str(e)) from None
    with store.writer(_db(db, results)) as con:
        for folder in built.values():
            store.ingest_dataset(con, folder)
    _print_card(built[arm])


@data_app.command("show")
def data_show(dataset_id: str = typer.Argument(..., help="A data set id (or a unique prefix of one)."),
              examples: int = typer.Option(3, "--examples", help="Kept and dropped examples to print (per step)."),
              results: Path = ResultsOpt) -> None:
    """Print a data set's card: counts and score distributions per step, a few kept and dropped examples."""
    from harness.data.build import find

    try:
        folder = find(results, dataset_id)
    except _input_errors() as e:
        raise fail(str(e)) from None
    _print_card(folder, examples)


def _print_card(folder: Path, examples: int = 3) -> None:
    from harness.data.cards import card_summary

    c = card_summary(folder, examples)
    for line in c["header"]:
        out.print(line, highlight=False)
    print_table(["#", "step", "params", "in", "out", "dropped", "scores", "s"], c["steps"], title="steps")
    print_table(["id", "prompt", "response"], [(r["id"], r["prompt"][:80], r["response"][:80]) for r in c["kept"]],
                title="kept (first rows)")
    print_table(["step", "id", "prompt", "response", "why"],
                [(f"{d['step_index']} {d['step']}", d["example_id"], (d.get("prompt") or "")[:60],
                  (d.get("response") or "")[:40], d["reason"]) for d in c["dropped"]], title="dropped (first per step)")
    out.print(f"folder: {folder}", highlight=False)


@app.command("models")
def models_list() -> None:
    """List the built-in model aliases. A local HF or LoRA adapter folder, a .gguf file or a cached hub id works too."""
    from harness.models import ALIASES, ModelError, resolve

    def fingerprint(alias: str) -> str:
        try:
            return resolve(alias).fingerprint
        except ModelError as e:  # a packaged alias whose package is not installed
            return str(e).split(": ", 1)[1]

    print_table(["alias", "fingerprint", "what it is"], [(k, fingerprint(k), v) for k, v in ALIASES.items()])


@app.command("eval")
def eval_cmd(model: str = typer.Argument(..., help="Model alias, HF folder, or LoRA adapter folder."),
             tasks: str = typer.Option(",".join(Eval().learn), help="Comma-separated learn tasks (chat template "
                                       "applied): names or YAML paths."),
             forget: str = typer.Option(",".join(Eval().forget), help="Comma-separated forget tasks (raw LM)."),
             limit: Optional[int] = typer.Option(None, help="Examples per task."),
             include: list[Path] = IncludeOpt, results: Path = ResultsOpt, db: Optional[Path] = DbOpt) -> None:
    """Score a saved model or adapter with the same tasks and code as a matrix cell, and store the run."""
    from harness import store
    from harness.eval.tasks import resolve_tasks, task_fingerprint
    from harness.models import resolve
    from harness.run import runner
    from harness.run.cell import run_job
    from harness.run.plan import base_job
    from harness.spec import Matrix, base_eval

    try:
        ref = resolve(model)
        ev = Eval(learn=[t for t in tasks.split(",") if t], forget=[t for t in forget.split(",") if t], limit=limit,
                  include=[str(d) for d in include])
        ev = resolve_tasks(Matrix(eval=ev)).eval
    except _input_errors() as e:
        raise fail(str(e).replace("eval.learn", "--tasks").replace("eval.forget", "--forget")) from None
    job = base_job(base_eval(model, ref.fingerprint, ev, "auto", task_fingerprint(ev.learn + ev.forget, ev.include)),
                   os.cpu_count() or 1)
    # lm-eval's own bars and messages go to a log, as a matrix worker's do
    log = results / "logs" / f"eval-{job.id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"evaluating {model} on {len(ev.learn) + len(ev.forget)} task(s) (library output: {log})", file=sys.stderr,
          flush=True)
    with log.open("w") as f, _fd_to(2, f):
        row = run_job(job, results, lambda e: None)
    path = _db(db, results)
    runner.ingest(path, results, [job.id], matrix="eval")
    if row["status"] != "ok":
        raise fail(f"evaluation failed: {row['error']}", code=1)
    cols, rows = store.query(path, f"SELECT task, task_group, metric, round(value, 4) AS value, round(stderr, 4) "
                                   f"AS stderr, n FROM evals WHERE run_id = '{job.id}' ORDER BY task_group, task")
    print_table(cols, rows, title=f"{model} (run {job.id})")


@app.command("bench")
def bench_cmd(models: str = typer.Option("tiny", help="Comma-separated model aliases or folders."),
              methods: str = typer.Option("full,lora", help="Comma-separated: full, lora."),
              steps: int = typer.Option(100, help="Optimizer steps per run."),
              batch_size: int = typer.Option(16, help="Examples per step."),
              repeats: int = typer.Option(2, help="Runs per trainer; the fastest counts."),
              results: Path = ResultsOpt) -> None:
    """Training throughput of the harness vs TRL's SFTTrainer on the same model, data, batches and loss."""
    from harness.train import bench

    rows = []
    for model in models.split(","):
        for method in methods.split(","):
            rows += bench.speed(model, method, steps, batch_size, results, repeats, log=err.print)
    table = bench.report(rows)
    bench.save(rows, table, results / "bench" / "speed.json")
    print_table(["setting", "trainer", "tok/s", "final loss"],
                [(r.setting, r.trainer, round(r.tokens_per_second), round(r.final_loss, 4)) for r in rows],
                title="training throughput (non-pad tokens/s after 5 warm-up steps; loss: mean of the last 10 steps)")
    print_table(["setting", "harness tok/s", "TRL default tok/s", "x TRL default", "TRL best mode", "x TRL best",
                 "loss gap vs TRL (same attention)"],
                [(t["setting"], round(t["harness_tok_s"]), round(t["trl_default_tok_s"]), f"{t['vs_default']:.2f}",
                  t["trl_best"], f"{t['vs_best']:.2f}", f"{t['loss_gap']:.2%}") for t in table],
                title="harness vs TRL (goal: >= 1.5x TRL default, >= 1.0x TRL's best mode, loss within 1%)")


@app.command("sql")
def sql_cmd(query: str = typer.Argument(..., help="A SQL query (read-only)."),
            fmt: str = typer.Option("table", "--format", help="table, csv or json."),
            results: Path = ResultsOpt, db: Optional[Path] = DbOpt) -> None:
    """Run a read-only SQL query against the results database."""
    import duckdb

    from harness import store

    if fmt not in ("table", "csv", "json"):
        raise fail(f"--format: expected table, csv or json, got {fmt!r}")
    try:
        cols, rows = store.query(_db(db, results), query)
    except FileNotFoundError as e:
        raise fail(str(e)) from None
    except duckdb.Error as e:
        raise fail(f"query failed: {str(e).splitlines()[0]}") from None
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(cols)
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
    elif fmt == "json":
        sys.stdout.write(json.dumps([dict(zip(cols, r)) for r in rows], default=str, indent=1) + "\n")
    else:
        print_table(cols, rows)


@app.command("report")
def report_cmd(matrix: Optional[str] = typer.Argument(None, help="Matrix name in the database, or its YAML file "
                                                                "(default: the most recently run matrix)."),
               output: Optional[Path] = typer.Option(None, "-o", "--output",
                                                     help="HTML file to write (default: reports/MATRIX.html)."),
               n_boot: int = typer.Option(1000, "--boot", help="Bootstrap resamples."),
               results: Path = ResultsOpt, db: Optional[Path] = DbOpt) -> None:
    """Compute the statistics of a matrix (stored in the stat_* tables) and write its self-contained HTML report."""
    import time

    from harness.analysis import report, stats

    t0 = time.perf_counter()
    if matrix and matrix.endswith((".yaml", ".yml")):
        from harness.spec import load_matrix

        try:
            matrix = load_matrix(matrix).name
        except _input_errors() as e:
            raise fail(str(e)) from None
    if n_boot < 100:
        raise fail(f"--boot: expected at least 100 resamples, got {n_boot}")
    try:
        path = report.build(_db(db, results), matrix, output, stats.Options(n_boot=n_boot))
    except (FileNotFoundError, report.ReportError) as e:
        raise fail(str(e)) from None
    out.print(f"{path}  ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f}s)", highlight=False)


@app.command("check")
def check_cmd(baseline: Optional[str] = typer.Option(None, "--baseline", help="A baseline JSON file (written by "
                                                     "--export-baseline), or a saved baseline, matrix or run id in "
                                                     "the database."),
              candidate: str = typer.Option("latest", "--candidate", help="A run id, a matrix name, or latest (the "
                                            "most recently run matrix)."),
              policy: Optional[Path] = typer.Option(None, "--policy", help="Policy YAML (default: "
                                                    "harness/analysis/check/policy.yaml)."),
              export_baseline: Optional[Path] = typer.Option(None, "--export-baseline",
                                                             help="Write the candidate as a baseline JSON file."),
              save_baseline: Optional[str] = typer.Option(None, "--save-baseline", help="Store the candidate as a "
                                                          "named baseline in the database."),
              junit: Optional[Path] = typer.Option(None, "--junit", help="Write JUnit XML (one testcase per gated "
                                                   "metric)."),
              markdown: Optional[Path] = typer.Option(None, "--markdown", help="Write a markdown summary (for "
                                                      "$GITHUB_STEP_SUMMARY)."),
              results: Path = ResultsOpt, db: Optional[Path] = DbOpt) -> None:
    """Compare a candidate with a baseline per cell and metric; exit 1 when a gated metric regressed beyond the
    policy's allowance AND significantly (paired bootstrap), 2 on bad input."""
    from harness.analysis import check, stats

    path = _db(db, results)
    if not (baseline or export_baseline or save_baseline):
        raise fail("--baseline: required (or --export-baseline FILE / --save-baseline NAME to write one)")
    try:
        pol, pol_fail = check.load_policy(policy)
        cand = check.load_side(candidate, path, "candidate")
        if export_baseline or save_baseline:
            body = check.to_json(cand, stats.Options(n_boot=pol.n_boot))
            if export_baseline:
                check.write_text(export_baseline, json.dumps(body, indent=1) + "\n")
                out.print(f"baseline written: {export_baseline} ({cand.label})", highlight=False)
            if save_baseline:
                check.save_baseline(path, save_baseline, body)
                out.print(f"baseline saved as {save_baseline!r} in {path}", highlight=False)
            if not baseline:
                return
        res = check.compare(check.load_side(baseline, path, "baseline"), cand, pol, pol_fail)
    except (check.CheckError, *_input_errors()) as e:
        raise fail(str(e)) from None
    print_table(check.COLUMNS, check.table(res), title=f"harness check: {res.baseline} vs {res.candidate}")
    for line in res.notes + [f"changed since the baseline: {c}" for c in res.changes]:
        out.print(f"  {line}", highlight=False, soft_wrap=True)
    if junit:
        check.write_text(junit, check.junit(res))
    if markdown:
        check.write_text(markdown, check.markdown(res))
    check.record(path, res)
    style = "green" if res.passed else "red"
    out.print(f"[{style}]{check.verdict(res)}[/]", highlight=False, soft_wrap=True)
    if not res.passed:
        raise typer.Exit(1)


from harness.cli import runs as _runs  # noqa: E402,F401  registers show, runs, export on `app`


def main() -> None:
    app()

