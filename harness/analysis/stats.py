"""Statistics over the results: bootstrap intervals, paired comparisons, multiple-comparison correction.

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

import json
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

from harness import store


@dataclass(frozen=True)
class Options:
    # 1,000 resamples: the standard error they give is within ~2% of its limit (relative MC error 1/sqrt(2B)) and the
    # 2.5%/97.5% percentiles rest on 25 resamples each (Efron & Tibshirani 1993, ch. 19: B >= 1000 for intervals)
    n_boot: int = 1000
    confidence: float = 0.95
    alpha: float = 0.05  # family-wise error rate of the Holm-corrected decisions ("significant")
    seed: int = 0


# ---------------------------------------------------------------------------------------------------------------
# Array functions: the building blocks (usable on their own, e.g. by CI gates).


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


# ---------------------------------------------------------------------------------------------------------------
# From the database: per-task score matrices, the metrics over them, and the tables `harness sql` reads.


@dataclass
class Task:
    name: str
    group: str  # learn | forget
    metric: str  # the primary metric
    higher_is_better: bool
    doc_ids: np.ndarray  # (n,)
    scores: np.ndarray  # (runs, n), NaN where a run has no score for an example
    weights: np.ndarray | None  # (n,) per-example weights of a ratio metric (bytes for bits_per_byte), else None


@dataclass
class Scores:
    matrix: str
    runs: pd.DataFrame  # one row per finished run of the matrix (row i = row i of every Task.scores)
    tasks: dict[str, Task] = field(default_factory=dict)
    superseded: int = 0  # older runs of the same cell left out (see _latest)


def arm_role(recipe: str | dict | None) -> str | None:
    """What an arm is, from its data recipe: bulk (the source as is), one of the baselines a data-selection claim must
    beat (random control: a random subset; length-matched random: one with a curated arm's response lengths;
    longest: the longest responses), or curated (anything else)."""
    if recipe is None:
        return None
    steps = (json.loads(recipe) if isinstance(recipe, str) else recipe).get("steps") or []
    if not steps:
        return "bulk"
    if any(s[0] == "longest" for s in steps):
        return "longest"
    if any(s[0] == "random" and s[1].get("match") == "length" for s in steps):
        return "length-matched random"
    return "random control" if any(s[0] == "random" for s in steps) else "curated"


ROLE_ORDER = {"curated": 0, "random control": 1, "length-matched random": 2, "longest": 3, "bulk": 4}
BASELINES = ("random control", "length-matched random", "longest")  # what a curated arm must beat


def _latest(runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One run per cell (model, method, arm, seed): the last finished. A matrix keeps the cells of its earlier
    versions (a changed config gives new cell ids), and those must not count as extra seeds. The base runs kept
    are the ones the kept runs compare against (or, with no trained run, the last one per model)."""
    sft = runs[runs["kind"] == "sft"].sort_values("finished_at", ascending=False) \
        .drop_duplicates(["model", "method", "arm", "seed"])
    base = runs[runs["kind"] != "sft"]
    base = base[base["run_id"].isin(sft["base_run_id"])] if len(sft) else \
        base.sort_values("finished_at", ascending=False).drop_duplicates(["model"])
    kept = runs[runs["run_id"].isin(set(sft["run_id"]) | set(base["run_id"]))].reset_index(drop=True)
    return kept, len(runs) - len(kept)


def load(con, matrix: str, run_ids: list[str] | None = None) -> Scores:
    """Every finished run of `matrix` (or, given `run_ids`, exactly those runs, superseded or not) and its
    per-example primary scores, as arrays (one query over samples)."""
    where, arg = ("r.run_id IN (SELECT unnest(?))", run_ids) if run_ids is not None else \
        ("r.run_id IN (SELECT run_id FROM matrix_cells WHERE matrix = ?)", matrix)
    runs = con.execute(f"""
        SELECT r.run_id, r.kind, r.model, r.method, r.method_kind, r.arm, r.seed, r.base_run_id, r.dataset_id,
               r.steps, r.examples, r.epochs, r.train_tokens, r.response_tokens, r.train_seconds, r.finished_at,
               c.train_flops, c.device_hours, c.total_cost_usd, d.recipe, r.config
        FROM runs r LEFT JOIN costs c USING (run_id)
        LEFT JOIN datasets d ON d.dataset_id = r.dataset_id
        WHERE {where} AND r.status = 'ok'
        ORDER BY r.kind = 'sft', r.model, r.method, r.arm, r.seed, r.run_id""", [arg]).df()
    runs, superseded = _latest(runs) if run_ids is None else (runs, 0)
    runs["role"] = [arm_role(r) if k == "sft" else None for r, k in zip(runs["recipe"], runs["kind"])]
    runs["row"] = np.arange(len(runs))
    out = Scores(matrix, runs, superseded=superseded)
    if runs.empty:
        return out
    con.register("_stat_runs", runs[["run_id", "row"]])
    tasks = con.execute("""
        SELECT e.task, any_value(e.task_group) AS grp, any_value(e.metric) AS metric,
               bool_and(e.higher_is_better) AS hib
        FROM evals e JOIN _stat_runs USING (run_id) WHERE e.is_primary GROUP BY e.task ORDER BY grp, e.task""").df()
    tasks["t"] = np.arange(len(tasks))
    con.register("_stat_tasks", tasks[["task", "t", "metric"]])
    # bits_per_byte is lm-eval's corpus ratio sum(bits) / sum(bytes): a mean of per-document values weighted by bytes
    rows = con.execute("""
        SELECT t.t, r.row, s.doc_id, coalesce(s.score, 'nan'::DOUBLE) AS score,
               CASE WHEN t.metric = 'bits_per_byte' THEN strlen(s.target) ELSE 1 END AS w
        FROM samples s JOIN _stat_runs r USING (run_id) JOIN _stat_tasks t USING (task)
        ORDER BY t.t, s.doc_id""").fetchnumpy()
    con.unregister("_stat_runs")
    con.unregister("_stat_tasks")
    bounds = np.searchsorted(rows["t"], np.arange(len(tasks) + 1))
    for t, task in tasks.iterrows():
        sl = slice(bounds[t], bounds[t + 1])
        doc_ids, doc = np.unique(rows["doc_id"][sl], return_inverse=True)
        scores = np.full((len(runs), len(doc_ids)), np.nan)
        scores[rows["row"][sl], doc] = rows["score"][sl]
        w = None
        if task.metric == "bits_per_byte":
            w = np.zeros(len(doc_ids))
            w[doc] = rows["w"][sl]
        out.tasks[task.task] = Task(task.task, task.grp, task.metric, bool(task.hib), doc_ids, scores, w)
    return out


@dataclass(frozen=True)
class Metric:
    """A metric of a run: sum over tasks of coef * (task mean - base mean if vs_base) / (|base mean| if relative)."""
    name: str
    coefs: dict[str, float]
    vs_base: bool = False
    relative: bool = False
    higher_is_better: bool = True
    description: str = ""


def metrics_for(s: Scores) -> list[Metric]:
    """learn, learn_gain and forget (the summary view's definitions) and each task's score and change vs base."""
    sign = {t: 1.0 if task.higher_is_better else -1.0 for t, task in s.tasks.items()}
    learn = [t for t, task in s.tasks.items() if task.group == "learn"]
    forget = [t for t, task in s.tasks.items() if task.group == "forget"]
    out = []
    if learn:
        out += [Metric("learn", {t: 1 / len(learn) for t in learn},
                       description="mean primary score over the learn tasks"),
                Metric("learn_gain", {t: sign[t] / len(learn) for t in learn}, vs_base=True,
                       description="learn minus the base model's learn (positive = learned)")]
    if forget:
        out.append(Metric("forget", {t: -sign[t] / len(forget) for t in forget}, vs_base=True, relative=True,
                          higher_is_better=False,
                          description="mean relative loss of the base's forget-task scores (positive = forgotten)"))
    for t, task in s.tasks.items():
        out += [Metric(t, {t: 1.0}, higher_is_better=task.higher_is_better, description=f"{task.metric} on {t}"),
                Metric(f"{t}:vs_base", {t: sign[t]}, vs_base=True,
                       description=f"{task.metric} on {t} minus the base's, oriented (positive = better than base)")]
    return out


def metric_samples(m: Metric, task_means: dict[str, np.ndarray], base_row: np.ndarray) -> np.ndarray:
    """(runs, B + 1) values of a metric from the per-task bootstrap means. A relative term is undefined where the
    base scores 0; like the summary view (avg skips NULL), such a term is left out and the others are averaged."""
    terms = []
    for t, coef in m.coefs.items():
        x, base = task_means[t], task_means[t][base_row]
        term = x - base if m.vs_base else x
        if m.relative:
            with np.errstate(invalid="ignore", divide="ignore"):
                term = np.where(base != 0, term / np.abs(base), np.nan)
        terms.append(coef * term)
    if not m.relative:
        return np.sum(terms, axis=0)
    stack = np.array(terms)
    ok = ~np.isnan(stack)
    with np.errstate(invalid="ignore", divide="ignore"):  # coefs are 1/T each: rescale to the mean of the present
        return np.where(ok.any(axis=0), np.nansum(stack, axis=0) * len(terms) / ok.sum(axis=0), np.nan)


@dataclass
class Tables:
    runs: pd.DataFrame
    arms: pd.DataFrame
    comparisons: pd.DataFrame


def _groups(runs: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """(model, method, arm) -> its runs ordered by seed; the base model is the group (model, 'base', None)."""
    return {(k[0], k[1], None if k[2] == "" else k[2]): g.sort_values("seed", na_position="first")
            for k, g in runs.fillna({"arm": ""}).groupby(["model", "method", "arm"], sort=False)}


def _pairs(groups: dict[tuple, pd.DataFrame]) -> list[tuple[str, tuple, tuple]]:
    """Arms compared within a model and method (curated before the random control before bulk), and methods
    compared within a model and arm."""
    sft = [k for k, g in groups.items() if (g["kind"] == "sft").all()]
    role = {k: groups[k]["role"].iloc[0] for k in sft}
    out = []
    for model in dict.fromkeys(k[0] for k in sft):
        for method in dict.fromkeys(k[1] for k in sft if k[0] == model):
            arms = sorted((k for k in sft if k[:2] == (model, method)), key=lambda k: (ROLE_ORDER.get(role[k], 9), k[2]))
            out += [("arms", a, b) for i, a in enumerate(arms) for b in arms[i + 1:]]
        for arm in dict.fromkeys(k[2] for k in sft if k[0] == model):
            methods = [k for k in sft if k[0] == model and k[2] == arm]
            out += [("methods", a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]
    return out


def _matched(ga: pd.DataFrame, gb: pd.DataFrame, seeds: list, n_docs: int, n_tasks: int) -> str:
    """What two groups of runs share and what they do not, from the runs themselves."""
    def one(col, fmt="{:,.0f}"):
        va, vb = ga[col].mean(), gb[col].mean()
        return fmt.format(va), fmt.format(vb), bool(np.isclose(va, vb, rtol=0.01))

    cfg_a, cfg_b = json.loads(ga["config"].iloc[0]), json.loads(gb["config"].iloc[0])
    same, diff = [], []
    for label, col, fmt in (("steps", "steps", "{:,.0f}"), ("train tokens", "train_tokens", "{:,.0f}"),
                            ("epochs", "epochs", "{:.2f}"), ("examples", "examples", "{:,.0f}")):
        a, b, eq = one(col, fmt)
        (same if eq else diff).append(f"{label} {a}" if eq else f"{label} {a} vs {b}")
    lr_a, lr_b = (c.get("method_cfg", {}).get("lr") or c["train"]["lr"] for c in (cfg_a, cfg_b))
    for label, a, b in (("schedule", cfg_a["train"]["schedule"], cfg_b["train"]["schedule"]),
                        ("batch", cfg_a["train"]["batch_size"], cfg_b["train"]["batch_size"]), ("lr", lr_a, lr_b)):
        (same if a == b else diff).append(f"{label} {a}" if a == b else f"{label} {a} vs {b}")
    same.append(f"seeds {[int(x) for x in seeds]}")
    same.append(f"eval {n_tasks} tasks, {n_docs:,} examples")
    return "matched: " + "; ".join(same) + (" | NOT matched: " + "; ".join(diff) if diff else "")


def analyse(s: Scores, opts: Options = Options()) -> Tables:
    """Per-run and per-arm intervals for every metric, and every paired comparison with corrected p-values."""
    runs = s.runs
    base_row = runs["row"].to_numpy()
    row_of = dict(zip(runs["run_id"], runs["row"]))
    base_row = np.array([row_of.get(b, r) for b, r in zip(runs["base_run_id"], base_row)])
    task_means = {t: boot_means(task.scores, example_counts(task.scores.shape[1], opts, t), task.weights)
                  for t, task in s.tasks.items()}
    mets = metrics_for(s)
    values = {m.name: metric_samples(m, task_means, base_row) for m in mets}
    n_docs = {m.name: sum(len(s.tasks[t].doc_ids) for t in m.coefs) for m in mets}
    conf = opts.confidence

    run_rows = []
    for m in mets:
        lo, hi = np.quantile(values[m.name][:, 1:], [(1 - conf) / 2, (1 + conf) / 2], axis=1)
        for i, rid in enumerate(runs["run_id"]):
            run_rows.append((s.matrix, rid, m.name, values[m.name][i, 0], lo[i], hi[i], m.higher_is_better,
                             n_docs[m.name]))
    run_df = pd.DataFrame(run_rows, columns=["matrix", "run_id", "metric", "value", "ci_low", "ci_high",
                                             "higher_is_better", "n_examples"])

    groups = _groups(runs)
    arm_rows = []
    for (model, method, arm), g in groups.items():
        rows = g["row"].to_numpy()
        sc = seed_counts(len(rows), opts.n_boot, opts.seed)
        for m in mets:
            v, lo, hi = interval(over_seeds(values[m.name][rows], sc), conf)
            arm_rows.append((s.matrix, model, method, g["method_kind"].iloc[0], arm, g["role"].iloc[0], m.name, v,
                             lo, hi, m.higher_is_better, len(rows), json.dumps([int(x) for x in g["seed"].dropna()]),
                             n_docs[m.name]))
    arm_df = pd.DataFrame(arm_rows, columns=["matrix", "model", "method", "method_kind", "arm", "role", "metric",
                                             "value", "ci_low", "ci_high", "higher_is_better", "n_seeds", "seeds",
                                             "n_examples"])

    compared = [m for m in mets if not m.name.endswith(":vs_base") and m.name != "learn_gain"]
    cmp_rows = []
    for kind, ka, kb in _pairs(groups):
        ga, gb = groups[ka], groups[kb]
        seeds = sorted(set(ga["seed"]) & set(gb["seed"]))
        if not seeds:
            continue
        ra = ga.set_index("seed").loc[seeds, "row"].to_numpy()
        rb = gb.set_index("seed").loc[seeds, "row"].to_numpy()
        sc = seed_counts(len(seeds), opts.n_boot, opts.seed)
        matched = _matched(ga, gb, seeds, sum(len(t.doc_ids) for t in s.tasks.values()), len(s.tasks))
        for m in compared:
            res = wald(over_seeds(values[m.name][ra] - values[m.name][rb], sc), conf)
            sizes, p_mc = [], None
            for t, coef in m.coefs.items():
                task = s.tasks[t]
                sizes.append(np.sign(coef) * effect_size(task.scores[ra], task.scores[rb], task.weights))
                if len(m.coefs) == 1:
                    p_mc = mcnemar(task.scores[ra], task.scores[rb])
            better = None if res["diff"] == 0 else ("a" if (res["diff"] > 0) == m.higher_is_better else "b")
            cmp_rows.append((s.matrix, kind, ka[0], ka[1], ka[2], kb[1], kb[2], m.name, m.higher_is_better,
                             float(np.mean(values[m.name][ra, 0])), float(np.mean(values[m.name][rb, 0])),
                             res["diff"], res["ci_low"], res["ci_high"], res["se"], float(np.mean(sizes)),
                             res["p_value"], p_mc, better, len(seeds), n_docs[m.name], matched))
    cmp_df = pd.DataFrame(cmp_rows, columns=[
        "matrix", "kind", "model", "a_method", "a_arm", "b_method", "b_arm", "metric", "higher_is_better", "a_value",
        "b_value", "diff", "ci_low", "ci_high", "se", "effect_size", "p_value", "p_mcnemar", "better", "n_seeds",
        "n_examples", "matched"])
    # one family: every comparison of the matrix
    cmp_df.insert(cmp_df.columns.get_loc("better"), "p_holm", adjust(cmp_df["p_value"], "holm"))
    cmp_df.insert(cmp_df.columns.get_loc("better"), "q_bh", adjust(cmp_df["p_value"], "fdr_bh"))
    cmp_df.insert(cmp_df.columns.get_loc("better"), "significant", cmp_df["p_holm"] < opts.alpha)
    return Tables(run_df, arm_df, cmp_df)


def _baselines_of(runs: pd.DataFrame) -> dict[tuple, list[str]]:
    """(model, method, curated arm, baseline role) -> the baseline arms it is judged against: those made for it
    (`like: ARM`), else those made for no arm, the one nearest in size (examples trained on)."""
    sft = runs[runs["kind"] == "sft"].drop_duplicates(["model", "method", "arm"])
    arm_of = dict(zip(sft["dataset_id"], sft["arm"]))
    like = {a: next((arm_of.get(p.get("like_dataset")) for _, p in (json.loads(r) if isinstance(r, str) else r or {})
                     .get("steps", []) if "like_dataset" in p), None) for a, r in zip(sft["arm"], sft["recipe"])}
    out = {}
    for (model, method), g in sft.groupby(["model", "method"], sort=False):
        size = dict(zip(g["arm"], g["examples"]))
        for cur in g.loc[g["role"] == "curated", "arm"]:
            for role in BASELINES:
                cands = list(g.loc[g["role"] == role, "arm"])
                made = [b for b in cands if like[b] == cur]
                free = sorted((b for b in cands if like[b] is None), key=lambda b: abs(size[b] - size[cur]))
                if made or free:
                    out[(model, method, cur, role)] = made or free[:1]
    return out


def baseline_verdicts(runs: pd.DataFrame, comparisons: pd.DataFrame, metric: str = "learn") -> pd.DataFrame:
    """Per curated arm and baseline (random control, length-matched random, longest): the paired difference on
    `metric`, its Holm-corrected p-value (over every comparison of the matrix) and whether the curated arm beats it
    significantly. A data-selection claim holds only where it beats all three."""
    cmp = comparisons[(comparisons["kind"] == "arms") & (comparisons["metric"] == metric)]
    cmp = cmp.set_index(["model", "a_method", "a_arm", "b_arm"])
    rows = []
    for (model, method, cur, role), arms in _baselines_of(runs).items():
        for b in arms:
            if (model, method, cur, b) not in cmp.index:
                continue
            c = cmp.loc[(model, method, cur, b)]
            rows.append((model, method, cur, role, b, c["diff"], c["ci_low"], c["ci_high"], c["p_holm"],
                         bool(c["significant"] and c["better"] == "a")))
    return pd.DataFrame(rows, columns=["model", "method", "arm", "baseline", "baseline_arm", "diff", "ci_low",
                                       "ci_high", "p_holm", "beats"])


STAT_TABLES = ("stat_runs", "stat_arms", "stat_comparisons")


def write(con, matrix: str, tables: Tables, opts: Options) -> None:
    """Replace the matrix's rows in the stat_* tables (one transaction)."""
    params = pd.DataFrame([{"matrix": matrix, "n_boot": opts.n_boot, "confidence": opts.confidence,
                            "alpha": opts.alpha, "seed": opts.seed}])
    with store.transaction(con):
        for name, df in zip(STAT_TABLES + ("stat_params",),
                            (tables.runs, tables.arms, tables.comparisons, params)):
            con.execute(f"DELETE FROM {name} WHERE matrix = ?", [matrix])
            if len(df):
                con.register("_df", df)
                con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM _df")
                con.unregister("_df")
