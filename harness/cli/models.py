"""`harness models`, `harness eval`, `harness bench`: the models there are, scoring one, training speed."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from harness.cli.common import DbOpt, IncludeOpt, ResultsOpt, db_path, err, fail, fd_to, input_errors, print_table
from harness.spec import Eval


def models_list() -> None:
    """List the built-in model aliases. A local HF or LoRA adapter folder, a .gguf file or a cached hub id works too."""
    from harness.models import ALIASES, ModelError, resolve

    def fingerprint(alias: str) -> str:
        try:
            return resolve(alias).fingerprint
        except ModelError as e:  # a packaged alias whose package is not installed
            return str(e).split(": ", 1)[1]

    print_table(["alias", "fingerprint", "what it is"], [(k, fingerprint(k), v) for k, v in ALIASES.items()])


def eval_cmd(model: str = typer.Argument(..., help="Model alias, HF folder, or LoRA adapter folder."),
             tasks: str = typer.Option(",".join(Eval().learn), help="Comma-separated learn tasks (chat template "
                                       "applied): names or YAML paths."),
             forget: str = typer.Option(",".join(Eval().forget), help="Comma-separated forget tasks (raw LM)."),
             limit: Optional[int] = typer.Option(None, help="Examples per task."),
             precision: str = typer.Option("auto", help="auto (bf16 autocast where the hardware has it), bf16 or "
                                           "fp32: the train.precision of the matrix whose cells to compare with."),
             include: list[Path] = IncludeOpt, results: Path = ResultsOpt, db: Optional[Path] = DbOpt) -> None:
    """Score a saved model or adapter with the same tasks and code as a matrix cell (an adapter unmerged, as its cell
    scored it), and store the run."""
    from harness import store
    from harness.eval.tasks import resolve_tasks, task_fingerprint
    from harness.models import resolve
    from harness.run import runner
    from harness.run.cell import run_job
    from harness.run.plan import base_job
    from harness.spec import Matrix, base_eval

    if precision not in ("auto", "bf16", "fp32"):
        raise fail(f"--precision: expected auto, bf16 or fp32, got {precision!r}")
    try:
        ref = resolve(model)
        ev = Eval(learn=[t for t in tasks.split(",") if t], forget=[t for t in forget.split(",") if t], limit=limit,
                  include=[str(d) for d in include])
        ev = resolve_tasks(Matrix(eval=ev)).eval
    except input_errors() as e:
        raise fail(str(e).replace("eval.learn", "--tasks").replace("eval.forget", "--forget")) from None
    job = base_job(base_eval(model, ref.fingerprint, ev, precision, task_fingerprint(ev.learn + ev.forget, ev.include)),
                   os.cpu_count() or 1)
    # lm-eval's own bars and messages go to a log, as a matrix worker's do
    log = results / "logs" / f"eval-{job.id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"evaluating {model} on {len(ev.learn) + len(ev.forget)} task(s) (library output: {log})", file=sys.stderr,
          flush=True)
    with log.open("w") as f, fd_to(2, f):
        row = run_job(job, results, lambda e: None)
    path = db_path(db, results)
    runner.ingest(path, results, [job.id], matrix="eval")
    if row["status"] != "ok":
        raise fail(f"evaluation failed: {row['error']}", code=1)
    cols, rows = store.query(path, f"SELECT task, task_group, metric, round(value, 4) AS value, round(stderr, 4) "
                                   f"AS stderr, n FROM evals WHERE run_id = '{job.id}' ORDER BY task_group, task")
    print_table(cols, rows, title=f"{model} (run {job.id})")


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
