"""From the database: per-task score matrices (runs x examples), what each arm is, and the metrics over them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


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
