"""What `harness matrix run` shows while cells run, the same for every executor.

On a terminal: a bar for the matrix and one line per running cell (step, loss, evaluating). Elsewhere (CI logs, a
file): one plain line per finished cell, "cell k/n label: learn .. forget .. (12.3s)", and no bars.
"""

from __future__ import annotations

from rich.markup import escape

from harness.run.jobs import Evaluating, Event, Finished, Note, Started, Step


def _score(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


class ProgressView:
    def __init__(self, console, total: int):
        self.console, self.total, self.done = console, total, 0
        self.bars = None
        if console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bars = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
        self.lanes: dict[str, int] = {}  # job id -> its progress line

    def __enter__(self):
        if self.bars:
            self.bars.__enter__()
            self.overall = self.bars.add_task("cells", total=self.total, info="")
        return self

    def __exit__(self, *exc):
        if self.bars:
            self.bars.__exit__(*exc)

    def update(self, ev: Event) -> None:
        if isinstance(ev, Note):
            self.console.print(ev.text, highlight=False, markup=False, soft_wrap=True)
        if not self.bars:
            return
        if isinstance(ev, Started):
            self.lanes[ev.job.id] = self.bars.add_task(f"  {ev.job.label}", total=None, info=f"loading ({ev.worker})")
        elif isinstance(ev, Step) and ev.job.id in self.lanes:
            self.bars.update(self.lanes[ev.job.id], completed=ev.step, total=ev.total, info=f"loss {ev.loss:.3f}")
        elif isinstance(ev, Evaluating) and ev.job.id in self.lanes:
            self.bars.update(self.lanes[ev.job.id], info="evaluating")

    def finished(self, ev: Finished, row: dict, learn: float | None, forget: float | None) -> None:
        self.done += 1
        if self.bars:
            if ev.job.id in self.lanes:
                self.bars.remove_task(self.lanes.pop(ev.job.id))
            self.bars.advance(self.overall)
        seconds = row.get("wall_seconds")
        took = f" ({seconds:.1f}s)" if seconds is not None else ""
        if row["status"] != "ok":
            self.console.print(f"[red]cell {self.done}/{self.total} {escape(ev.job.label)} ({ev.job.id}) failed:[/] "
                               f"{escape(str(row['error']))}{took}", highlight=False, soft_wrap=True)
        elif not self.bars:
            self.console.print(f"cell {self.done}/{self.total} {ev.job.label}: learn {_score(learn)} forget "
                               f"{_score(forget)}{took}", highlight=False, markup=False, soft_wrap=True)
