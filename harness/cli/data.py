"""`harness data build | show`, `harness base build`, `harness tasks build`: what cells read, built outside a
matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from harness.cli.common import DbOpt, ResultsOpt, db_path, err, fail, input_errors, out, print_table


def base_build(preset: str = typer.Option("tiny", help="Base recipe: tiny (default world) or micro (tests)."),
) -> None:
    """Train the tokenizer and pretrain the tiny base (cached by content hash under $HARNESS_CACHE/bases/)."""
    from harness.models.pretrain import PRESETS, build_base

    if preset not in PRESETS:
        raise fail(f"--preset: unknown base {preset!r}; expected one of {', '.join(PRESETS)}")
    path = build_base(PRESETS[preset], log=err.print)
    out.print(str(path))


def tasks_build() -> None:
    """Regenerate tasks/data/*.jsonl from the skills world (deterministic)."""
    from harness.eval.tasks import write_task_data

    for p in write_task_data():
        out.print(str(p))


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
    except input_errors() as e:
        raise fail(str(e)) from None
    with store.writer(db_path(db, results)) as con:
        for folder in built.values():
            store.ingest_dataset(con, folder)
    _print_card(built[arm])


def data_show(dataset_id: str = typer.Argument(..., help="A data set id (or a unique prefix of one)."),
              examples: int = typer.Option(3, "--examples", help="Kept and dropped examples to print (per step)."),
              results: Path = ResultsOpt) -> None:
    """Print a data set's card: counts and score distributions per step, a few kept and dropped examples."""
    from harness.data.build import find

    try:
        folder = find(results, dataset_id)
    except input_errors() as e:
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
