"""The analysis driver: per-run and per-arm intervals and every paired comparison of a matrix, the verdicts against
the baselines, and the stat_* tables `harness sql` reads."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness import store
from harness.analysis.stats.bootstrap import (Options, adjust, boot_means, effect_size, example_counts, interval,
                                              mcnemar, over_seeds, seed_counts, wald)
from harness.analysis.stats.scores import BASELINES, ROLE_ORDER, Metric, Scores, metric_samples, metrics_for


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
    row_of = dict(zip(runs["run_id"], runs["row"]))
    base_row = np.array([row_of.get(b, r) for b, r in zip(runs["base_run_id"], runs["row"].to_numpy())])
    task_means = {t: boot_means(task.scores, example_counts(task.scores.shape[1], opts, t), task.weights)
                  for t, task in s.tasks.items()}
    mets = metrics_for(s)
    values = {m.name: metric_samples(m, task_means, base_row) for m in mets}
    n_docs = {m.name: sum(len(s.tasks[t].doc_ids) for t in m.coefs) for m in mets}
    groups = _groups(runs)
    return Tables(_run_table(s, mets, values, n_docs, opts), _arm_table(s, groups, mets, values, n_docs, opts),
                  _comparison_table(s, groups, mets, values, n_docs, opts))


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
    """Every (model, method, arm)'s mean over its seeds of every metric, with its interval over seeds x examples."""
    arm_rows = []
    for (model, method, arm), g in groups.items():
        rows = g["row"].to_numpy()
        sc = seed_counts(len(rows), opts.n_boot, opts.seed)
        for m in mets:
            v, lo, hi = interval(over_seeds(values[m.name][rows], sc), opts.confidence)
            arm_rows.append((s.matrix, model, method, g["method_kind"].iloc[0], arm, g["role"].iloc[0], m.name, v,
                             lo, hi, m.higher_is_better, len(rows), json.dumps([int(x) for x in g["seed"].dropna()]),
                             n_docs[m.name]))
    return pd.DataFrame(arm_rows, columns=["matrix", "model", "method", "method_kind", "arm", "role", "metric",
                                           "value", "ci_low", "ci_high", "higher_is_better", "n_seeds", "seeds",
                                           "n_examples"])


def _comparison_table(s: Scores, groups: dict[tuple, pd.DataFrame], mets: list[Metric],
                      values: dict[str, np.ndarray], n_docs: dict[str, int], opts: Options) -> pd.DataFrame:
    """Every pair of arms (and of methods), paired by seed and example, with p-values corrected over all of them."""
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
            res = wald(over_seeds(values[m.name][ra] - values[m.name][rb], sc), opts.confidence)
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
    return cmp_df


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
