"""The array functions: bootstrap resamples and intervals, paired tests, multiple-comparison correction.

Every estimate here is a mean over examples (per run and task) and, for an arm, a mean over seeds. Its uncertainty
comes from a two-way bootstrap over the crossed design seeds x examples (Owen 2007, "the pigeonhole bootstrap"): one
resample draws the evaluation examples with replacement -- the SAME draw for every run, since every run is scored on
the same examples -- and, for arm means, the seeds with replacement -- the same draw for every arm, since arms share
seeds. Two arms compared on one resample therefore stay paired by example and by seed, and the spread of the
difference counts both the example noise and the seed-to-seed noise. Two known biases, both stated in the report:
the two-way bootstrap counts the seed x example residual twice (conservative), and with S seeds it shrinks the
seed-level variance by (S-1)/S (with 2 seeds by half), so seed-heavy noise is understated when seeds are few.

A resample is a vector of counts (how often each example was drawn), so the resampled means of all runs are one
matrix product: scores (runs x examples) @ counts.T (examples x resamples). That is what makes 1M sample rows cheap.

Array convention: every bootstrap array has the observed statistic in column 0 and the B resamples in columns 1..B,
so one function computes the estimate and its resamples alike.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class Options:
    # 1,000 resamples: the standard error they give is within ~2% of its limit (relative MC error 1/sqrt(2B)) and the
    # 2.5%/97.5% percentiles rest on 25 resamples each (Efron & Tibshirani 1993, ch. 19: B >= 1000 for intervals)
    n_boot: int = 1000
    confidence: float = 0.95
    alpha: float = 0.05  # family-wise error rate of the Holm-corrected decisions ("significant")
    seed: int = 0


def _rng(seed: int, *key) -> np.random.Generator:
    """An independent, reproducible stream per (seed, key): a task's example draws do not depend on other tasks."""
    return np.random.default_rng([seed, *(zlib.crc32(str(k).encode()) for k in key)])


def resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot + 1, n) float counts: row 0 is the sample itself (all ones), rows 1.. how often each of the n
    examples was drawn in n draws with replacement (bincount of the drawn indices: 5x faster than rng.multinomial)."""
    drawn = rng.integers(0, n, size=(n_boot, n)) + np.arange(1, n_boot + 1)[:, None] * n
    return np.bincount(drawn.ravel(), minlength=(n_boot + 1) * n).reshape(n_boot + 1, n).astype(float) + \
        (np.arange(n_boot + 1) == 0)[:, None]


def boot_means(scores: np.ndarray, counts: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Resampled (weighted) means of every row of `scores` (runs x examples; NaN = not scored): (runs, B + 1)."""
    scores = np.atleast_2d(scores)
    mask = ~np.isnan(scores)
    w = np.ones(scores.shape[1]) if weights is None else np.asarray(weights, dtype=float)
    num = np.where(mask, scores, 0.0) * w @ counts.T
    den = (mask * w) @ counts.T if not mask.all() else np.broadcast_to(w @ counts.T, num.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def over_seeds(x: np.ndarray, seed_counts: np.ndarray) -> np.ndarray:
    """Mean over seeds (rows of x: seeds x (B + 1)) with the seeds resampled per column: (B + 1,)."""
    return np.einsum("sb,bs->b", x, seed_counts) / seed_counts.sum(axis=1)


def interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high): the observed value and the percentile interval of the resamples."""
    lo, hi = np.quantile(samples[..., 1:], [(1 - confidence) / 2, (1 + confidence) / 2], axis=-1)
    return float(samples[..., 0]), float(lo), float(hi)


def wald(samples: np.ndarray, confidence: float = 0.95) -> dict:
    """A difference's bootstrap standard error, normal interval and two-sided p-value for 'no difference'.

    The normal approximation (rather than counting resamples beyond zero) gives p-values below 1/B, which a Holm
    correction over dozens of comparisons needs (0.05 / 80 = 0.0006)."""
    d = float(samples[0])
    se = float(np.std(samples[1:], ddof=1))
    z = sps.norm.ppf((1 + confidence) / 2)
    p = float(2 * sps.norm.sf(abs(d) / se)) if se > 0 else float(d == 0)
    return {"diff": d, "se": se, "ci_low": float(d - z * se), "ci_high": float(d + z * se), "p_value": p}


def effect_size(a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Cohen's d_z of paired scores (seeds x examples): mean over examples of the seed-averaged difference a - b,
    divided by its standard deviation over examples (weighted like the metric)."""
    d = np.nanmean(np.atleast_2d(a) - np.atleast_2d(b), axis=0)
    ok = ~np.isnan(d)
    w = np.ones(d.shape) if weights is None else np.asarray(weights, dtype=float)
    d, w = d[ok], w[ok]
    if d.size < 2:
        return float("nan")
    mean = np.average(d, weights=w)
    sd = float(np.sqrt(np.cov(d, aweights=w)))
    return float(mean / sd) if sd > 0 else (0.0 if mean == 0 else float(np.sign(mean) * np.inf))


def is_binary(x: np.ndarray) -> bool:
    v = x[~np.isnan(x)]
    return v.size > 0 and bool(np.isin(v, (0.0, 1.0)).all())


def mcnemar(a: np.ndarray, b: np.ndarray) -> float | None:
    """Exact McNemar p-value for paired binary outcomes (seeds x examples, pairs pooled over seeds); None when the
    scores are not binary. It treats the (seed, example) pairs as independent; the bootstrap p-value does not."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    ok = ~(np.isnan(a) | np.isnan(b))
    if not (is_binary(a) and is_binary(b)) or not ok.any():
        return None
    from statsmodels.stats.contingency_tables import mcnemar as _mcnemar

    a, b = a[ok] == 1, b[ok] == 1
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    return float(_mcnemar(table, exact=True).pvalue)


def adjust(p_values, method: str = "holm") -> np.ndarray:
    """Multiple-comparison correction: 'holm' (family-wise error) or 'fdr_bh' (Benjamini-Hochberg false discovery
    rate). NaN p-values are left out of the family and stay NaN."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method=method)[1]
    return out


def seed_counts(n_seeds: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(B + 1, n_seeds) resample counts over seeds; the same for every group with as many seeds (pairs stay paired)."""
    return resample_counts(n_seeds, n_boot, _rng(seed, "seeds", n_seeds))


def example_counts(n: int, opts: Options, task: str = "") -> np.ndarray:
    """The example resamples of a task: one draw shared by every run scored on it (runs stay paired)."""
    return resample_counts(n, opts.n_boot, _rng(opts.seed, "examples", task))


def mean_interval(scores: np.ndarray, weights: np.ndarray | None = None, opts: Options = Options(),
                  task: str = "") -> dict:
    """An arm's (or one run's) mean over seeds x examples (rows x columns) with its two-way bootstrap interval.
    With the same `task` name, it reproduces `harness report`'s numbers (stat_arms) exactly."""
    scores = np.atleast_2d(scores)
    m = boot_means(scores, example_counts(scores.shape[1], opts, task), weights)
    v, lo, hi = interval(over_seeds(m, seed_counts(len(scores), opts.n_boot, opts.seed)), opts.confidence)
    return {"value": v, "ci_low": lo, "ci_high": hi}


def compare(a: np.ndarray, b: np.ndarray, higher_is_better: bool = True, weights: np.ndarray | None = None,
            opts: Options = Options(), task: str = "") -> dict:
    """Paired comparison of two arms scored on the same examples (columns) with the same seeds (rows, same order):
    difference a - b with its interval and (uncorrected) p-value, d_z effect size, exact McNemar (binary scores),
    and whether a is the better one (oriented by higher_is_better). With the same `task` name, it reproduces
    `harness report`'s numbers for that task (stat_comparisons) exactly."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if a.shape != b.shape:
        raise ValueError(f"compare: a and b must be paired (same seeds x examples), got {a.shape} and {b.shape}")
    counts = example_counts(a.shape[1], opts, task)
    diff = over_seeds(boot_means(a, counts, weights) - boot_means(b, counts, weights),
                      seed_counts(len(a), opts.n_boot, opts.seed))
    out = wald(diff, opts.confidence)
    out["effect_size"] = effect_size(a, b, weights)
    out["p_mcnemar"] = mcnemar(a, b)
    out["a_better"] = (out["diff"] > 0) == higher_is_better if out["diff"] != 0 else None
    return out
