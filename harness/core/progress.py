"""Progress of a long loop over items (embedding, sampling, distilling): done/total, items/s and the time left.

    with progress("embedding minilm", total=len(texts), unit="texts") as advance:
        for batch in batches:
            ...
            advance(len(batch))

On a terminal a rich bar on stderr; elsewhere (CI logs, files) one plain line every `every` seconds and one at the
end, so a log shows that a 3-minute step is moving without a line per batch. Totals under `min_total` show nothing.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator


def _eta(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


@contextlib.contextmanager
def progress(label: str, total: int, unit: str = "rows", every: float = 10.0,
             min_total: int = 64) -> Iterator[Callable[[int], None]]:
    """Yields `advance(n)`; the display ends when the block does."""
    if total < min_total:
        yield lambda n: None
        return
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                                   TimeRemainingColumn)

        cols = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
        t0 = time.perf_counter()
        with Progress(*cols, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(label, total=total, rate="")

            def advance(n: int) -> None:
                bar.advance(task, n)
                done = bar.tasks[0].completed
                bar.update(task, rate=f"{done / max(time.perf_counter() - t0, 1e-9):,.1f} {unit}/s")

            yield advance
        return
    t0 = last = time.perf_counter()
    done = shown = 0

    def line() -> str:
        s = time.perf_counter() - t0
        rate = done / s if s > 0 else 0.0
        left = f", {_eta((total - done) / rate)} left" if rate and done < total else ""
        return f"{label}: {done:,}/{total:,} {unit}, {rate:,.1f} {unit}/s{left} ({_eta(s)})"

    def advance(n: int) -> None:
        nonlocal done, last, shown
        done += n
        if time.perf_counter() - last >= every:
            last, shown = time.perf_counter(), done
            print(line(), file=sys.stderr, flush=True)

    yield advance
    if time.perf_counter() - t0 >= every and shown != done:  # a quick loop says nothing; the end is said once
        print(line(), file=sys.stderr, flush=True)
