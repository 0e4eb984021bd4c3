"""The array functions: example resamples, the test of a mean over seeds, multiple-comparison correction.

Every estimate here is a mean over examples (per run and task) and, for an arm, a mean over seeds. Its noise has two
sources that need different treatment. In the crossed design seeds x examples, one seed's value is
    x_s = mu + e + u_s    (s = 1..S)
where x_s is a run's mean over the examples (or, for two arms paired by seed, the difference of their runs on seed s),
e the part that comes from which examples were drawn -- the SAME for every seed, since every run is scored on the same
examples -- and u_s the seed's own noise: training randomness, and the example-level noise of that one run (which is
independent across runs). The mean over seeds has Var = Var(e) + Var(u) / S, estimated by
    Var(e): the bootstrap over examples, seeds held fixed (one draw of examples shared by every run): the covariance of
            two seeds' resampled means, i.e. the variance of the resampled mean over seeds less each run's own part
            (the variance of one seed's resampled mean less that covariance), which is in u_s and counted there;
    Var(u): s^2, the sample variance of x_s over the S seeds (ddof 1), which has S - 1 degrees of freedom; or, for a
            comparison, pooled over the matrix (pooled_seed_variance: the residual of score ~ group + seed over every
            trained run, (G - 1)(S - 1) df: 5 in the demo, not 1), which assumes the groups' seed noise alike.
So SE^2 = Var(e) + s^2 / S. Each part is scaled by the quantile of its own distribution and the two are added in
quadrature: the interval is  mean +- sqrt(z^2 Var(e) + max(z^2 own, t_df^2 s^2) / S), z the normal quantile (Var(e)
rests on the examples, dozens to thousands of them: counted as exact), t_df Student's with the seed part's df, and
own a run's own example noise, which u_s contains and the bootstrap measures from the examples: the seed part is at
least that (two seeds of binary scores that tie exactly, s^2 = 0, do not make the test infinitely sure), and either
term alone is a valid test, so the larger is too. The p-value is the alpha at which that half-width reaches |mean|.
With no example part this is exactly the one-sample t test on the S values (for paired arms scipy's ttest_rel on the
per-seed means; pooled, statsmodels' OLS contrast test); with no seed part, the bootstrap's normal test. In between it
is conservative: simulated over the ratio Var(e) / (Var(u) / S) (tests/test_stats.py), the rate of |error| >
half-width stays at or below alpha (with 2 seeds: alpha where the seed part dominates, down to 0.26 alpha in
between). The textbook alternative, Student's t with the Welch-Satterthwaite df of the sum, is not: with S - 1 = 1
its df shoots up whenever s^2 is small by chance, and it rejected 12.7% at alpha 0.05 where Var(e) is a twentieth of
the seed part. With 2 seeds and seed noise dominating, the 97.5% quantile is 12.7, not 1.96: that is what 2 seeds
can say alone, and why comparisons pool. Two groups of seeds that are not paired are Welch's two-sample test
(s_x^2 / S_x + s_y^2 / S_y, with Welch's df). With one seed nothing measures seed noise: the SE is the bootstrap's
over examples alone (the normal test), a caveat the report and `harness check` state.

Why not resample the seeds too (the two-way "pigeonhole" bootstrap, Owen 2007, as before): with S seeds it shrinks the
seed variance by (S-1)/S, and a normal test ignores that s^2 has S - 1 degrees of freedom. With 2 seeds and seed-heavy
noise (prose bits per byte) bench/stats_simulation.py measured a primary family-wise error of 62% where 5% was
promised. The exchange rate (tables.exchange_rates), a nonlinear function of several arms' means with a percentile
interval, still resamples seeds (seed_counts, over_seeds) and says so.

A resample is a vector of counts (how often each example was drawn), so the resampled means of all runs are one
matrix product: scores (runs x examples) @ counts.T (examples x resamples). That is what makes 1M sample rows cheap.

Array convention: every bootstrap array has the observed statistic in column 0 and the B resamples in columns 1..B,
so one function computes the estimate and its resamples alike.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special
from scipy.optimize import brentq


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


def pooled_seed_variance(x: np.ndarray, group: np.ndarray, seed: np.ndarray | None = None) -> tuple[float, int]:
    """The seed noise of one run's value, pooled over many groups of runs: the residual mean square of the additive
    model x ~ group + seed (least squares; x one observed value per run, NaN left out), with its degrees of freedom
    n - rank: (G - 1)(S - 1) for G groups that all ran the same S seeds. Without `seed`, x ~ group (the pooled
    within-group variance, n - G df). The seed term takes out what a seed does to every group alike (a shared data
    order, a shared initialisation), which a paired difference cancels anyway; the residual is the noise of
    x[a, s] - x[b, s] (variance 2 x the result). It assumes the groups' seed noise is alike: the classic analysis-of-
    variance error term. (nan, 0) when nothing is left to measure it."""
    x = np.asarray(x, dtype=float)
    ok = ~np.isnan(x)
    cols = [pd.get_dummies(pd.Series(np.asarray(group)[ok], dtype=str)).to_numpy(float)]
    if seed is not None:
        cols.append(pd.get_dummies(pd.Series(np.asarray(seed)[ok], dtype=str)).to_numpy(float)[:, 1:])
    design, x = np.hstack(cols), x[ok]
    df = len(x) - int(np.linalg.matrix_rank(design)) if len(x) else 0
    if df <= 0:
        return float("nan"), 0
    resid = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    return float(resid @ resid / df), df


def seed_test(x: np.ndarray, y: np.ndarray | None = None, confidence: float = 0.95,
              pooled: tuple[float, int] | None = None) -> dict:
    """The mean over seeds of x (seeds x (B + 1): per seed, its value and its resamples over examples), or with y the
    difference of two groups' means over seeds that are not paired (x - y, Welch), with its standard error, the
    seed part's degrees of freedom, interval and two-sided p-value for 0 (the module docstring has the arithmetic).
    x and y share their example resamples (columns) where their runs were scored on the same examples.
    `pooled` (x only): (the variance of one seed's value of x, its degrees of freedom) measured over more runs than
    these (pooled_seed_variance); it replaces s^2 and S - 1. Ignored with one seed or no degree of freedom."""
    groups = [(np.atleast_2d(x), 1.0)] + ([] if y is None else [(np.atleast_2d(y), -1.0)])
    if pooled is not None and (y is not None or not pooled[1] > 0):
        pooled = None
    est = float(sum(c * g[:, 0].mean() for g, c in groups))
    var_ex = float(np.var(sum(c * g[:, 1:].mean(axis=0) for g, c in groups), ddof=1))
    seed_parts = []  # (s_g^2 / S_g, own_g / S_g, S_g - 1) per group with seeds to measure
    for g, _ in groups:
        s = len(g)
        if s < 2:
            continue
        cov = np.cov(g[:, 1:])
        own = np.trace(cov) / s - (cov.sum() - np.trace(cov)) / (s * (s - 1))  # a run's own example noise
        var_ex -= own / s  # it is in s^2 below: count it once
        s2, df_s = (np.var(g[:, 0], ddof=1), s - 1) if pooled is None else pooled
        seed_parts.append((float(s2) / s, float(own) / s, df_s))
    var_ex = float(np.maximum(var_ex, 0.0))  # NaN stays NaN
    var_s2, var_own = (sum(q[i] for q in seed_parts) for i in (0, 1))
    # Welch's df over the parts (S - 1 for one group), each part at least its runs' own example noise
    floored = [(np.maximum(a, b), d) for a, b, d in seed_parts]
    var_seed = sum(q for q, _ in floored)
    df = var_seed ** 2 / sum(q ** 2 / d for q, d in floored) if var_seed > 0 else np.inf

    def half_width(alpha: float) -> float:  # each part at its own two-sided quantile, added in quadrature
        # (scipy.special's quantiles: scipy.stats' norm.isf and t.isf are the same numbers at 100x the cost). The seed
        # part is at least the runs' own example noise, which u_s contains and the examples measure (a normal
        # quantile; seeds of binary scores can tie: s^2 = 0): max(z^2 own, t^2 s^2) / S. Either term alone is a valid
        # test, so the larger is too.
        z2 = special.ndtri(alpha / 2) ** 2
        return float(np.sqrt(z2 * var_ex + np.maximum(z2 * var_own, special.stdtrit(df, alpha / 2) ** 2 * var_s2)))

    se = float(np.sqrt(var_ex + var_seed))
    out = {"diff": est, "se": se, "df": float(df)}
    if not se > 0:  # no noise at all (identical runs), or undefined (NaN)
        lo, p = (est, float(est == 0)) if se == 0 else (float("nan"), float("nan"))
        return out | {"ci_low": lo, "ci_high": lo, "p_value": p}
    if est == 0:
        p = 1.0
    elif var_ex == 0 and var_own == 0:  # the seeds' spread only: Student's t, in closed form
        p = float(2 * special.stdtr(df, -abs(est) / np.sqrt(var_s2)))
    elif var_s2 == 0:  # the examples only: the normal test
        p = float(2 * special.ndtr(-abs(est) / np.sqrt(var_ex + var_own)))
    else:  # the alpha at which the half-width reaches |est| (it shrinks as alpha grows, to 0 at alpha = 1)
        def excess(log_alpha: float) -> float:
            return half_width(np.exp(log_alpha)) - abs(est)

        lowest = np.log(1e-100)  # p below it counts as 0 (a t quantile at 1 df is ~1e100 there: no overflow)
        p = 0.0 if excess(lowest) <= 0 else float(np.exp(brentq(excess, lowest, 0.0, xtol=1e-10)))
    h = half_width(1 - confidence)
    return out | {"ci_low": est - h, "ci_high": est + h, "p_value": p}


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
    scores are not binary. It treats the (seed, example) pairs as independent; seed_test does not."""
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
    """(B + 1, n_seeds) resample counts over seeds; the same for every group with as many seeds (pairs stay paired).
    For the exchange rate's percentile interval only (see the module docstring); every test uses seed_test."""
    return resample_counts(n_seeds, n_boot, _rng(seed, "seeds", n_seeds))


def over_seeds(x: np.ndarray, seed_counts: np.ndarray) -> np.ndarray:
    """Mean over seeds (rows of x: seeds x (B + 1)) with the seeds resampled per column: (B + 1,)."""
    return np.einsum("sb,bs->b", x, seed_counts) / seed_counts.sum(axis=1)


def example_counts(n: int, opts: Options, task: str = "") -> np.ndarray:
    """The example resamples of a task: one draw shared by every run scored on it (runs stay paired)."""
    return resample_counts(n, opts.n_boot, _rng(opts.seed, "examples", task))


def mean_interval(scores: np.ndarray, weights: np.ndarray | None = None, opts: Options = Options(),
                  task: str = "") -> dict:
    """An arm's (or one run's) mean over seeds x examples (rows x columns) with its interval (seed_test), standard
    error and degrees of freedom. With the same `task` name, it reproduces `harness report`'s numbers (stat_arms)."""
    scores = np.atleast_2d(scores)
    res = seed_test(boot_means(scores, example_counts(scores.shape[1], opts, task), weights),
                    confidence=opts.confidence)
    return {"value": res["diff"]} | {k: res[k] for k in ("ci_low", "ci_high", "se", "df")}


def compare(a: np.ndarray, b: np.ndarray, higher_is_better: bool = True, weights: np.ndarray | None = None,
            opts: Options = Options(), task: str = "", pooled: tuple[float, int] | None = None) -> dict:
    """Paired comparison of two arms scored on the same examples (columns) with the same seeds (rows, same order):
    difference a - b with its interval, degrees of freedom and (uncorrected) p-value (seed_test on the per-seed
    differences), d_z effect size, exact McNemar (binary scores), and whether a is the better one (oriented by
    higher_is_better). `pooled`: the seed noise of one seed's difference measured over a whole matrix (2 x
    pooled_seed_variance of its runs' values, and its df), as `harness report` counts it by default. With the same
    `task` name (and that `pooled`), it reproduces the report's numbers for that task (stat_comparisons) exactly."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if a.shape != b.shape:
        raise ValueError(f"compare: a and b must be paired (same seeds x examples), got {a.shape} and {b.shape}")
    counts = example_counts(a.shape[1], opts, task)
    out = seed_test(boot_means(a, counts, weights) - boot_means(b, counts, weights), confidence=opts.confidence,
                    pooled=pooled)
    out["effect_size"] = effect_size(a, b, weights)
    out["p_mcnemar"] = mcnemar(a, b)
    out["a_better"] = (out["diff"] > 0) == higher_is_better if out["diff"] != 0 else None
    return out
