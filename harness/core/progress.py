"""Progress lines for long steps (pretraining a base, sampling, distillation, scoring): one line every ~10 s on
stderr with what is done, the rate and the time left, so a step of minutes never looks hung, in a terminal or in a
CI log alike. Steps that end within the first interval print nothing."""

from __future__ import annotations

import sys
import time
from typing import Callable


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Progress:
    def __init__(self, label: str, total: int, unit: str = "rows", log: Callable[[str], None] | None = None,
                 every_s: float = 10.0):
        self.label, self.total, self.unit, self.log, self.every_s = label, total, unit, log or _stderr, every_s
        self.done = 0
        self.t0 = self.last = time.perf_counter()
        self.first: tuple[float, int] | None = None  # (time, done) at the first update: the pace is taken from
        # there on, as a first step's one-off costs (allocation, warm-up) would otherwise inflate the ETA

    def update(self, n: int = 1, extra: str = "") -> None:
        """`n` more done; prints when ~every_s seconds passed since the last line (and never for the last item)."""
        self.done += n
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, self.done)
        if now - self.last < self.every_s or self.done >= self.total:
            return
        self.last = now
        elapsed = now - self.t0
        t1, d1 = self.first
        rate = (self.done - d1) / (now - t1) if self.done > d1 and now > t1 else self.done / elapsed
        self.log(f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({rate:.3g}/s){extra}, {elapsed:.0f}s, "
                 f"ETA {(self.total - self.done) / rate:.0f}s")
