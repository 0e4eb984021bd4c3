"""The `harness` command: thin typer wrappers over the plain functions of each stage, assembled here into one app
(matrix.py: matrix; data.py: data, base, tasks; models.py: models, eval, bench; analysis.py: sql, report, check;
runs.py: runs, show, export; common.py: what they share).

Heavy libraries (torch, transformers, lm-eval) are imported only by the commands that need them, so that planning,
`harness sql` and a rerun of a finished matrix start in well under a second.
"""

from __future__ import annotations

import typer

# each command module imports common first, which sets the environment before any library is imported
from harness.cli import analysis, data, matrix, models, runs

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

for group, name, command in (
        (matrix_app, "plan", matrix.matrix_plan), (matrix_app, "run", matrix.matrix_run),
        (matrix_app, "defaults", matrix.matrix_defaults), (base_app, "build", data.base_build),
        (tasks_app, "build", data.tasks_build), (data_app, "build", data.data_build),
        (data_app, "show", data.data_show),
        (app, "models", models.models_list), (app, "eval", models.eval_cmd), (app, "bench", models.bench_cmd),
        (app, "sql", analysis.sql_cmd), (app, "report", analysis.report_cmd), (app, "check", analysis.check_cmd),
        (app, "runs", runs.runs_cmd), (app, "show", runs.show_cmd), (app, "export", runs.export_cmd)):
    group.command(name)(command)


def main() -> None:
    app()
