"""`harness sql`, `harness report`, `harness check`: reading the database, the HTML report, the CI gate."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from harness.cli.common import DbOpt, ResultsOpt, db_path, fail, input_errors, out, print_table


def sql_cmd(query: str = typer.Argument(..., help="A SQL query (read-only)."),
            fmt: str = typer.Option("table", "--format", help="table, csv or json."),
            results: Path = ResultsOpt, db: Optional[Path] = DbOpt) -> None:
    """Run a read-only SQL query against the results database."""
    import duckdb

    from harness import store

    if fmt not in ("table", "csv", "json"):
        raise fail(f"--format: expected table, csv or json, got {fmt!r}")
    try:
        cols, rows = store.query(db_path(db, results), query)
    except FileNotFoundError as e:
        raise fail(str(e)) from None
    except duckdb.PermissionException as e:
        raise fail(f"query refused: {str(e).splitlines()[0]} (harness sql reads the results database only)") from None
    except duckdb.Error as e:
        raise fail(f"query failed: {str(e).splitlines()[0]}") from None
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")  # csv's default CRLF leaves a \r in `$(harness sql ... | tail -1)`
        w.writerow(cols)
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
    elif fmt == "json":
        sys.stdout.write(json.dumps([dict(zip(cols, r)) for r in rows], default=str, indent=1) + "\n")
    else:
        print_table(cols, rows)


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
    analysis = None  # the primary family the matrix's last run recorded, unless its YAML file is named
    if matrix and matrix.endswith((".yaml", ".yml")):
        from harness.spec import load_matrix

        try:
            m = load_matrix(matrix)
        except input_errors() as e:
            raise fail(str(e)) from None
        matrix, analysis = m.name, m.analysis
    if n_boot < 100:
        raise fail(f"--boot: expected at least 100 resamples, got {n_boot}")
    try:
        path = report.build(db_path(db, results), matrix, output, stats.Options(n_boot=n_boot), analysis)
    except (FileNotFoundError, report.ReportError) as e:
        raise fail(str(e)) from None
    out.print(f"{path}  ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f}s)", highlight=False)


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
    policy's allowance AND significantly (a t test over seeds, paired by seed and example), 2 on bad input."""
    from harness.analysis import check, stats

    path = db_path(db, results)
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
    except (check.CheckError, *input_errors()) as e:
        raise fail(str(e)) from None
    print_table(check.COLUMNS, check.table(res), title=f"harness check: {res.baseline} vs {res.candidate}")
    for line in res.notes + [f"changed since the baseline: {c}" for c in res.changes] + [res.family]:
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
