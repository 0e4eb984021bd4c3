"""The analysis driver: per-run and per-arm intervals and every paired comparison of a matrix, the verdicts against
the baselines, and the stat_* tables `harness sql` reads."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness import store
from harness.analysis.stats.bootstrap import (Options, adjust, boot_means, effect_size, example_counts, mcnemar,
                                              over_seeds, pooled_seed_variance, seed_counts, seed_test)
from harness.analysis.stats.family import Family, arms_from_runs, of_runs
from harness.analysis.stats.scores import BASELINES, ROLE_ORDER, Metric, Scores, metric_samples, metrics_for
from harness.spec import Analysis


@dataclass
class Tables:
    runs: pd.DataFrame
    arms: pd.DataFrame
    comparisons: pd.DataFrame
    family: str = ""  # the primary family in one line, with its size as compared
    exchange: pd.DataFrame | None = None  # stat_exchange: what each curated arm is worth in bulk examples


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


def analyse(s: Scores, opts: Options = Options(), analysis: Analysis = Analysis()) -> Tables:
    """Per-run and per-arm intervals for every metric, and every paired comparison with p-values corrected within
    its family: Holm over the primary family that `analysis` declares, Benjamini-Hochberg over the rest."""
    runs = s.runs
    row_of = dict(zip(runs["run_id"], runs["row"]))
    base_row = np.array([row_of.get(b, r) for b, r in zip(runs["base_run_id"], runs["row"].to_numpy())])
    task_means = {t: boot_means(task.scores, example_counts(task.scores.shape[1], opts, t), task.weights)
                  for t, task in s.tasks.items()}
    mets = metrics_for(s)
    values = {m.name: metric_samples(m, task_means, base_row) for m in mets}
    n_docs = {m.name: sum(len(s.tasks[t].doc_ids) for t in m.coefs) for m in mets}
    groups = _groups(runs)
    fam = of_runs(analysis, runs)
    pooled = _pooled(groups, mets, values) if analysis.seed_noise == "pooled" else {}
    cmp = _comparison_table(s, groups, mets, values, n_docs, opts, fam, pooled)
    n_models = runs.loc[runs["kind"] == "sft", "model"].nunique()
    return Tables(_run_table(s, mets, values, n_docs, opts), _arm_table(s, groups, mets, values, n_docs, opts), cmp,
                  fam.describe(n_models, int((cmp["family"] == "primary").sum())) + "; " + _noise_line(groups, pooled),
                  exchange_rates(s, groups, values, opts, analysis.exchange))


def _sft_groups(groups: dict[tuple, pd.DataFrame]) -> dict[str, list[pd.DataFrame]]:
    """model -> its trained (method, arm) groups of runs."""
    out: dict[str, list[pd.DataFrame]] = {}
    for (model, _, _), g in groups.items():
        if (g["kind"] == "sft").all():
            out.setdefault(model, []).append(g)
    return out


def _noise_line(groups: dict[tuple, pd.DataFrame], pooled: dict[tuple, tuple[float, int]]) -> str:
    """The seed noise the comparisons count, in words."""
    dfs = sorted({df for _, df in pooled.values() if df > 0})
    if not dfs:
        return "seed noise: from the seeds of each comparison alone (seeds - 1 degrees of freedom)"
    n = max(len(gs) for gs in _sft_groups(groups).values())
    return (f"seed noise: pooled per metric over the {n} method x arm groups (score ~ group + seed, "
            f"{'/'.join(map(str, dfs))} degrees of freedom; assumes seed noise alike across the groups)")


def _run_table(s: Scores, mets: list[Metric], values: dict[str, np.ndarray], n_docs: dict[str, int],
               opts: Options) -> pd.DataFrame:
    """Every run's value of every metric, with its interval over examples."""
    conf = opts.confidence
    run_rows = []
    for m in mets:
        lo, hi = np.quantile(values[m.name][:, 1:], [(1 - conf) / 2, (1 + conf) / 2], axis=1)
        for i, rid in enumerate(s.runs["run_id"]):
            run_rows.append((s.matrix, rid, m.name, values[m.name][i, 0], lo[i], hi[i], m.higher_is_better,
                             n_docs[m.name]))
    return pd.DataFrame(run_rows, columns=["matrix", "run_id", "metric", "value", "ci_low", "ci_high",
                                           "higher_is_better", "n_examples"])


def _arm_table(s: Scores, groups: dict[tuple, pd.DataFrame], mets: list[Metric], values: dict[str, np.ndarray],
               n_docs: dict[str, int], opts: Options) -> pd.DataFrame:
    """Every (model, method, arm)'s mean over its seeds of every metric, with its interval (seed_test)."""
    arm_rows = []
    for (model, method, arm), g in groups.items():
        rows = g["row"].to_numpy()
        for m in mets:
            r = seed_test(values[m.name][rows], confidence=opts.confidence)
            arm_rows.append((s.matrix, model, method, g["method_kind"].iloc[0], arm, g["role"].iloc[0], m.name,
                             r["diff"], r["ci_low"], r["ci_high"], m.higher_is_better, len(rows),
                             json.dumps([int(x) for x in g["seed"].dropna()]), n_docs[m.name]))
    return pd.DataFrame(arm_rows, columns=["matrix", "model", "method", "method_kind", "arm", "role", "metric",
                                           "value", "ci_low", "ci_high", "higher_is_better", "n_seeds", "seeds",
                                           "n_examples"])


def _pooled(groups: dict[tuple, pd.DataFrame], mets: list[Metric],
            values: dict[str, np.ndarray]) -> dict[tuple, tuple[float, int]]:
    """(model, metric) -> the seed noise of a paired difference of two trained runs (variance, df), pooled over every
    method x arm of the model (pooled_seed_variance: 2 x the residual of score ~ method x arm + seed)."""
    out = {}
    for model, gs in _sft_groups(groups).items():
        rows = np.concatenate([g["row"].to_numpy() for g in gs])
        label = np.repeat(np.arange(len(gs)), [len(g) for g in gs])
        seeds = np.concatenate([g["seed"].to_numpy() for g in gs])
        for m in mets:
            var, df = pooled_seed_variance(values[m.name][rows, 0], label, seeds)
            out[model, m.name] = (2 * var, df)
    return out


def _comparison_table(s: Scores, groups: dict[tuple, pd.DataFrame], mets: list[Metric],
                      values: dict[str, np.ndarray], n_docs: dict[str, int], opts: Options,
                      fam: Family, pooled: dict[tuple, tuple[float, int]]) -> pd.DataFrame:
    """Every pair of arms (and of methods), paired by seed and example, with p-values corrected within its family;
    the seed noise pooled over the matrix where `pooled` has it (model, metric), else each pair's own."""
    compared = [m for m in mets if not m.name.endswith(":vs_base") and m.name != "learn_gain"]
    cmp_rows = []
    for kind, ka, kb in _pairs(groups):
        ga, gb = groups[ka], groups[kb]
        seeds = sorted(set(ga["seed"]) & set(gb["seed"]))
        if not seeds:
            continue
        ra = ga.set_index("seed").loc[seeds, "row"].to_numpy()
        rb = gb.set_index("seed").loc[seeds, "row"].to_numpy()
        matched = _matched(ga, gb, seeds, sum(len(t.doc_ids) for t in s.tasks.values()), len(s.tasks))
        for m in compared:
            res = seed_test(values[m.name][ra] - values[m.name][rb], confidence=opts.confidence,
                            pooled=pooled.get((ka[0], m.name)))
            sizes, p_mc = [], None
            for t, coef in m.coefs.items():
                task = s.tasks[t]
                sizes.append(np.sign(coef) * effect_size(task.scores[ra], task.scores[rb], task.weights))
                if len(m.coefs) == 1:
                    p_mc = mcnemar(task.scores[ra], task.scores[rb])
            better = None if res["diff"] == 0 else ("a" if (res["diff"] > 0) == m.higher_is_better else "b")
            cmp_rows.append((s.matrix, kind, ka[0], ka[1], ka[2], kb[1], kb[2], m.name, m.higher_is_better,
                             float(np.mean(values[m.name][ra, 0])), float(np.mean(values[m.name][rb, 0])),
                             res["diff"], res["ci_low"], res["ci_high"], res["se"], res["df"], float(np.mean(sizes)),
                             res["p_value"], p_mc, better, len(seeds), n_docs[m.name], matched))
    cmp_df = pd.DataFrame(cmp_rows, columns=[
        "matrix", "kind", "model", "a_method", "a_arm", "b_method", "b_arm", "metric", "higher_is_better", "a_value",
        "b_value", "diff", "ci_low", "ci_high", "se", "df", "effect_size", "p_value", "p_mcnemar", "better",
        "n_seeds", "n_examples", "matched"])
    return corrected(cmp_df, fam, opts.alpha)


def corrected(cmp: pd.DataFrame, fam: Family, alpha: float) -> pd.DataFrame:
    """The comparisons with their family (primary | exploratory) and its correction: Holm over the primary family
    (p_holm; significant: family-wise error <= alpha), Benjamini-Hochberg over the exploratory rest (q_bh;
    significant: false discovery rate <= alpha). A row has the corrected value of its own family only."""
    primary = np.array([fam.primary(k, a, b, m) for k, a, b, m in zip(
        cmp["kind"], np.where(cmp["kind"] == "arms", cmp["a_arm"], cmp["a_method"]),
        np.where(cmp["kind"] == "arms", cmp["b_arm"], cmp["b_method"]), cmp["metric"])], dtype=bool)
    p = cmp["p_value"].to_numpy(dtype=float)
    at = cmp.columns.get_loc("better")
    cmp.insert(at, "p_holm", np.where(primary, adjust(np.where(primary, p, np.nan), "holm"), np.nan))
    cmp.insert(at + 1, "q_bh", np.where(primary, np.nan, adjust(np.where(primary, np.nan, p), "fdr_bh")))
    cmp.insert(at + 2, "significant", np.where(primary, cmp["p_holm"], cmp["q_bh"]) < alpha)
    cmp["family"] = np.where(primary, "primary", "exploratory")
    return cmp


EXCHANGE_COLUMNS = ["matrix", "model", "method", "metric", "arm", "examples", "value", "bulk_arms", "bulk_sizes",
                    "slope", "intercept", "equiv_examples", "ci_low", "ci_high", "status", "n_seeds",
                    "arm_cost_usd", "bulk_cost_usd", "statement"]


def exchange_rates(s: Scores, groups: dict[tuple, pd.DataFrame], values: dict[str, np.ndarray], opts: Options,
                   metric: str | None) -> pd.DataFrame:
    """The exchange rate: per model, method and curated arm, the bulk examples it scores like. The dose-response arms
    (the curated arm's source as is or plain random subsets of it, at >= 2 sizes) give a line score = a + b log(n)
    (least squares over the arm means); inverting it at the curated arm's score gives n. Its interval is the
    percentile interval of n over a two-way bootstrap (examples and seeds resampled once for all arms: paired), not
    seed_test of the comparisons: with few seeds it understates seed-to-seed noise (by (S-1)/S in variance). Out of
    the range of sizes tried, n is an extrapolation, and said to be."""
    if metric is None or metric not in values:
        return pd.DataFrame(columns=EXCHANGE_COLUMNS)
    info = arms_from_runs(s.runs)
    rows = []
    for (model, method, cur), g in groups.items():
        if cur is None or cur not in info or info[cur].role != "curated":
            continue
        dose = {a: gg for (mo, me, a), gg in groups.items() if (mo, me) == (model, method) and a in info
                and info[a].dose and info[a].source == info[cur].source}
        sizes = {a: float(gg["examples"].mean()) for a, gg in dose.items()}
        if len(set(sizes.values())) < 2:
            continue
        seeds = sorted(set(g["seed"]).intersection(*(set(gg["seed"]) for gg in dose.values())))
        if not seeds:
            continue
        sc = seed_counts(len(seeds), opts.n_boot, opts.seed)

        def arm_values(gg):  # (B + 1,): the arm's mean over the shared seeds, resampled like every arm
            return over_seeds(values[metric][gg.set_index("seed").loc[seeds, "row"].to_numpy()], sc)

        names = sorted(dose, key=sizes.get)
        x = np.log([sizes[a] for a in names])
        y = np.array([arm_values(dose[a]) for a in names])  # (arms, B + 1)
        slope = ((x - x.mean()) @ (y - y.mean(axis=0))) / ((x - x.mean()) @ (x - x.mean()))
        icpt = y.mean(axis=0) - slope * x.mean()
        yc = arm_values(g)
        # with no dose-response in a resample (slope <= 0), no amount of bulk reaches a better arm: +inf (or 0)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            log_n = np.where(slope > 0, (yc - icpt) / slope, np.where(yc > y.mean(axis=0), np.inf, -np.inf))
            n = np.exp(log_n)
        lo, hi = np.quantile(n[1:], [(1 - opts.confidence) / 2, (1 + opts.confidence) / 2], method="inverted_cdf")
        lo_size, hi_size = min(sizes.values()), max(sizes.values())
        status = "flat" if slope[0] <= 0 else "above" if n[0] > hi_size else "below" if n[0] < lo_size else "within"
        cost = _cost_at(g, dose, sizes, n[0])
        rows.append((s.matrix, model, method, metric, cur, float(g["examples"].mean()), float(yc[0]),
                     json.dumps(names), json.dumps([int(sizes[a]) for a in names]), float(slope[0]), float(icpt[0]),
                     float(n[0]), float(lo), float(hi), status, len(seeds), *cost,
                     exchange_statement(cur, float(g["examples"].mean()), status, float(n[0]), float(lo), float(hi),
                                        lo_size, hi_size, opts.confidence)))
    return pd.DataFrame(rows, columns=EXCHANGE_COLUMNS)


def _cost_at(g: pd.DataFrame, dose: dict[str, pd.DataFrame], sizes: dict[str, float], n: float) -> tuple:
    """(the curated arm's cost per run, curation included; a bulk run's cost at n examples): the bulk arms' costs
    interpolated in log(examples), held at the nearest size tried outside their range. NaN where costs are not
    recorded."""
    names = sorted(dose, key=sizes.get)
    costs = np.array([dose[a]["total_cost_usd"].mean() for a in names], dtype=float)
    arm = float(g["total_cost_usd"].mean())
    if np.isnan(costs).any() or not np.isfinite(n) or n <= 0:
        return arm, float("nan")
    return arm, float(np.interp(np.log(n), np.log([sizes[a] for a in names]), costs))


def exchange_statement(arm: str, examples: float, status: str, n: float, lo: float, hi: float, lo_size: float,
                       hi_size: float, confidence: float = 0.95) -> str:
    """The exchange rate in one sentence: 'curated (802 examples) scores like bulk with 5,300 examples; 95%
    interval [2,100, 9,800]'."""
    def size(v: float) -> str:
        return f"> {hi_size:,.0f}" if v > hi_size else f"< {lo_size:,.0f}" if v < lo_size else f"{v:,.0f}"

    head = f"{arm} ({examples:,.0f} examples) scores like"
    ci = f"{confidence:.0%} interval [{size(lo)}, {size(hi)}]"
    if status == "flat":
        return f"{arm}: no dose-response (the bulk score does not rise with examples): no exchange rate"
    if status == "above":
        return f"{head} more than the largest bulk size tried ({hi_size:,.0f}); {ci}"
    if status == "below":
        return f"{head} fewer than the smallest bulk size tried ({lo_size:,.0f}); {ci}"
    return f"{head} bulk with {n:,.0f} examples; {ci}"


VERDICT_COLUMNS = ["comparison", "metric", "diff a - b [95% CI]", "p", "p (Holm)", "verdict"]


def primary_verdicts(cmp: pd.DataFrame) -> list[tuple]:
    """The primary family's rows in words (`harness matrix run` prints them): which one is better, significantly
    after Holm, or that no difference was shown."""
    rows = []
    for c in cmp[cmp["family"] == "primary"].itertuples():
        a, b, within = (c.a_arm, c.b_arm, c.a_method) if c.kind == "arms" else (c.a_method, c.b_method, c.a_arm)
        winner = a if c.better == "a" else b
        verdict = f"{winner} better" if c.significant else "no difference shown"
        rows.append((f"{c.model} {within}: {a} vs {b}", c.metric,
                     f"{c.diff:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}]", f"{c.p_value:.2g}", f"{c.p_holm:.2g}",
                     verdict))
    return rows


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
    `metric`, its corrected p-value (Holm within the primary family, where the comparison is in it; else the
    exploratory Benjamini-Hochberg q) and whether the curated arm beats it significantly. A data-selection claim
    holds only where it beats all three."""
    cmp = comparisons[(comparisons["kind"] == "arms") & (comparisons["metric"] == metric)]
    cmp = cmp.set_index(["model", "a_method", "a_arm", "b_arm"])
    rows = []
    for (model, method, cur, role), arms in _baselines_of(runs).items():
        for b in arms:
            if (model, method, cur, b) not in cmp.index:
                continue
            c = cmp.loc[(model, method, cur, b)]
            fam = c.get("family", "primary")
            rows.append((model, method, cur, role, b, c["diff"], c["ci_low"], c["ci_high"],
                         c["p_holm"] if fam == "primary" else c["q_bh"], fam,
                         bool(c["significant"] and c["better"] == "a")))
    return pd.DataFrame(rows, columns=["model", "method", "arm", "baseline", "baseline_arm", "diff", "ci_low",
                                       "ci_high", "p_adjusted", "family", "beats"])


STAT_TABLES = ("stat_runs", "stat_arms", "stat_comparisons", "stat_exchange")


def write(con, matrix: str, tables: Tables, opts: Options) -> None:
    """Replace the matrix's rows in the stat_* tables (one transaction)."""
    params = pd.DataFrame([{"matrix": matrix, "n_boot": opts.n_boot, "confidence": opts.confidence,
                            "alpha": opts.alpha, "seed": opts.seed, "family": tables.family}])
    exchange = tables.exchange if tables.exchange is not None else pd.DataFrame(columns=EXCHANGE_COLUMNS)
    with store.transaction(con):
        for name, df in zip(STAT_TABLES + ("stat_params",),
                            (tables.runs, tables.arms, tables.comparisons, exchange, params)):
            con.execute(f"DELETE FROM {name} WHERE matrix = ?", [matrix])
            if len(df):
                con.register("_df", df)
                con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM _df")
                con.unregister("_df")
