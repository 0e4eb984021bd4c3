"""The policy of `harness check`: what may move how far, what is gated, what must match.

policy.yaml (next to this file) is the default and documents every key; the defaults below must equal its values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, NoReturn

from harness.spec import SpecError, convert, read_yaml

DEFAULT_POLICY = Path(__file__).resolve().parent / "policy.yaml"


class CheckError(ValueError):
    """Bad input: a one-line description (exit code 2)."""


@dataclass(frozen=True)
class Allowance:
    abs: float | None = 0.02  # in the metric's units: 0.02 = 2 points of exact match
    rel: float | None = 0.05  # a share of the baseline's value: 5%


@dataclass(frozen=True)
class Policy:
    alpha: float = 0.05  # significance level, after the correction
    correction: Literal["holm", "bh", "none"] = "holm"  # over the gated rows (family-wise / false discovery rate)
    max_drop: Allowance = field(default_factory=Allowance)  # the larger of the two allowances applies
    forget_max_growth: float | None = 0.05  # forget replaces max_drop with this absolute allowance
    gate: list[str] = field(default_factory=lambda: ["learn", "forget"])  # metrics that can fail the check
    cells: Literal["all"] | list[str] = "all"  # cells that can fail the check: all, or method/arm names
    match: list[Literal["model", "eval", "method", "data", "budget", "train", "harness_version"]] = \
        field(default_factory=lambda: ["model", "eval"])  # what must be identical (else exit 2)
    n_boot: int = 1000  # bootstrap resamples (see stats.Options)
    # training rows of an arm that may overlap one evaluation task's documents (the contamination table of the
    # candidate's matrix run); None: reported by `matrix run` and the report, not gated
    max_contaminated_rows: int | None = None
    # the seed-to-seed noise of a change: pooled over the cells paired by seed (the changes' spread around their
    # cell's mean: cells x (seeds - 1) degrees of freedom; assumes it is alike across cells), or per-cell (the cell's
    # own seeds alone: seeds - 1 df)
    seed_noise: Literal["pooled", "per-cell"] = "pooled"


GATE_WORDS = ("learn", "forget", "learn_tasks", "forget_tasks", "all")
Fail = Callable[[tuple, str], NoReturn]


def load_policy(path: Path | None) -> tuple[Policy, Fail]:
    """The policy file (default: harness/analysis/check/policy.yaml) and a function that fails naming its file:line:key,
    for names that can only be checked against the runs (gate metrics, cells)."""
    path = Path(path or DEFAULT_POLICY)
    if not path.is_file():
        raise SpecError(f"{path}: file not found (expected a check policy YAML; see {DEFAULT_POLICY})")
    raw, ctx = read_yaml(path.read_text(), str(path))
    if raw is None:
        raw = {}
    policy: Policy = convert(raw, Policy, ctx)
    if not 0 < policy.alpha < 1:
        ctx.fail(("alpha",), f"expected a number between 0 and 1, got {policy.alpha}")
    for key, v in (("max_drop", policy.max_drop.abs), ("max_drop", policy.max_drop.rel),
                   ("forget_max_growth", policy.forget_max_growth)):
        if v is not None and v < 0:
            ctx.fail((key,), f"expected an allowance >= 0 (or null), got {v}")
    if policy.max_contaminated_rows is not None and policy.max_contaminated_rows < 0:
        ctx.fail(("max_contaminated_rows",), f"expected a count >= 0 (or null), got {policy.max_contaminated_rows}")
    if policy.n_boot < 100:
        ctx.fail(("n_boot",), f"expected at least 100 resamples, got {policy.n_boot}")
    return policy, ctx.fail
