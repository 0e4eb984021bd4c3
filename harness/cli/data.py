"""`harness data build | show`, `harness base build`, `harness tasks build`: what cells read, built outside a
matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from harness.spec.matrix import Train

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
              model: Optional[str] = typer.Option(None, "--model", help="Render through this model's tokenizer and "
                                                  "chat template: token lengths, what max_length costs, the example "
                                                  "as the model sees it."),
              max_length: int = typer.Option(Train.max_length, "--max-length", help="train.max_length, with --model."),
              loss_on: str = typer.Option(Train.loss_on, "--loss-on", help="train.loss_on: all | last."),
              too_long: str = typer.Option(Train.too_long, "--too-long", help="train.too_long: truncate | drop."),
              results: Path = ResultsOpt) -> None:
    """Print a data set's card: counts and score distributions per step, a few kept and dropped examples, and one
    example with the spans that carry loss marked (with --model: through the model's chat template, and what
    max_length costs in rows and trained tokens)."""
    from harness.data.build import find

    for key, value, allowed in (("--loss-on", loss_on, ("all", "last")), ("--too-long", too_long, ("truncate", "drop"))):
        if value not in allowed:
            raise fail(f"{key}: expected {' or '.join(allowed)}, got {value!r}")
    try:
        folder = find(results, dataset_id)
        tokenizer = None
        if model is not None:
            from harness import models

            tokenizer = models.load_tokenizer(models.resolve(model), results)
    except input_errors() as e:
        raise fail(str(e)) from None
    _print_card(folder, examples)
    _print_training_view(folder, tokenizer, model, max_length, loss_on, too_long)


def _print_training_view(folder: Path, tokenizer, model: str | None, max_length: int, loss_on: str,
                         too_long: str) -> None:
    from rich.markup import escape

    from harness.data.build import load_rows
    from harness.data.cards import clip, example_turns, length_figures, showcase

    rows = load_rows(folder.parent.parent, folder.name)
    row = showcase(rows)
    out.print(f"example {row['id']} as trained (loss_on {loss_on}; [reverse]«marked»[/] spans carry loss):",
              highlight=False)
    if tokenizer is None:
        for role, text, trained in example_turns(row, loss_on):
            body = f"[reverse]«{escape(clip(text))}»[/]" if trained else escape(clip(text))
            out.print(f"  [bold]{role}:[/] {body}", highlight=False)
        return
    from harness.train.sft import conversation_segments

    messages = [{"role": role, "content": text} for role, text, _ in example_turns(row)]
    out.print("".join(f"[reverse]«{escape(clip(t))}»[/]" if trained else escape(clip(t))
                      for t, trained in conversation_segments(tokenizer, messages, loss_on)), highlight=False)
    f = length_figures(rows, tokenizer, max_length, too_long)
    out.print(f"with {model}'s tokenizer, max_length {max_length}, too_long {too_long}: {f['rows_over_length']:,} of "
              f"{f['rows']:,} rows longer, {f['rows_dropped']:,} dropped; trained tokens lost "
              f"{f['trained_tokens_lost']:,} of {f['trained_tokens']:,} "
              f"({f['trained_tokens_lost'] / max(1, f['trained_tokens']):.1%}); trained tokens per row: "
              f"{f['trained_per_row_all']:.1f} with loss_on all, {f['trained_per_row_last']:.1f} with last",
              highlight=False)


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
