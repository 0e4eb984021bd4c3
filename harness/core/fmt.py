"""Numbers as text, the same in every table the harness writes (the report, `harness check`)."""

from __future__ import annotations

import math


def number(v, digits: int = 3, big: float = 1000, big_digits: int = 0) -> str:
    """`digits` decimals; from `big` up, `big_digits` decimals with thousands separators; "–" for a missing value
    (None, NaN, pandas' NA) or an infinite one."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(x):
        return "–"
    return f"{x:,.{big_digits}f}" if abs(x) >= big else f"{x:.{digits}f}"
