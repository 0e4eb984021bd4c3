"""`harness check`: a statistical regression gate between a baseline and a candidate, for CI.

Both sides are sets of finished runs with their per-example scores (harness/analysis/stats.py's Scores): the baseline from a
JSON file written by `harness check --export-baseline`, a baseline saved in the database, a matrix or a run id; the
candidate from the database. A cell is (model, method, arm) over its seeds; the base model is the cell model/base.
For every cell in both and every metric (learn, forget and each task's primary metric) the check computes the change
candidate - baseline with the two-way bootstrap of stats.py, paired by example (the same examples are scored on both
sides) and by seed (the seeds both sides ran), and a p-value corrected over the gated rows. A row is a regression
only when its change is worse than the policy allows AND significant; improvements are found the same way.

What the policy says must match (by default the model and the evaluated examples) makes a mismatch bad input (exit
2); everything else that changed (data, training config, harness version) is the change under test, and listed.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, NoReturn

import numpy as np
import pandas as pd

from harness import __version__, store
from harness.analysis import stats
from harness.spec import SpecError, convert, read_yaml
from harness.core.ids import stable_hash

DEFAULT_POLICY = Path(__file__).resolve().parent / "check_policy.yaml"
FORMAT = "harness-check-baseline/1"


class CheckError(ValueError):
    """Bad input: a one-line description (exit code 2)."""


# ---------------------------------------------------------------------------------------------------------------
# The policy (harness/analysis/check_policy.yaml documents every key; these defaults must equal that file's values).


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


GATE_WORDS = ("learn", "forget", "learn_tasks", "forget_tasks", "all")
Fail = Callable[[tuple, str], NoReturn]


def load_policy(path: Path | None) -> tuple[Policy, Fail]:
    """The policy file (default: harness/analysis/check_policy.yaml) and a function that fails naming its file:line:key,
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
    if policy.n_boot < 100:
        ctx.fail(("n_boot",), f"expected at least 100 resamples, got {policy.n_boot}")
    return policy, ctx.fail


# ---------------------------------------------------------------------------------------------------------------
# A side of the comparison: runs and their per-example scores, from the database or a baseline file.


@dataclass
class Side:
    label: str  # what was loaded, for messages: "baseline tests/baselines/check.json"
    name: str  # what it is, without where: "matrix check", "run 1a2b3c4d5e6f"
    scores: stats.Scores  # runs has, besides stats.load's columns: cell, harness_version, data (JSON)
    examples: dict[str, str]  # task -> fingerprint of the examples as evaluated (doc id, prompt, target)
    partial: bool = False  # one run id: only its cell is compared


def cell_key(model: str, method: str, arm) -> str:
    return f"{model}/base" if method == "base" else f"{model}/{method}/{arm}"


def _with_cells(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs.copy()
    runs["cell"] = [cell_key(m, me, a) for m, me, a in zip(runs["model"], runs["method"], runs["arm"])]
    runs["seed"] = runs["seed"].astype("Int64")  # the base model has none: keep the others integers
    return runs


def from_db(con, value: str, db: Path, what: str) -> Side:
    """`latest`, a saved baseline, a matrix name or a run id in the database."""
    if what == "baseline":
        row = con.execute("SELECT body FROM check_baselines WHERE name = ?", [value]).fetchone() \
            if _has_table(con, "check_baselines") else None
        if row:
            return from_json(json.loads(row[0]), f"baseline {value!r} saved in {db}")
    matrices = [m for (m,) in con.execute("""
        SELECT m.matrix FROM matrix_cells m JOIN runs r USING (run_id) GROUP BY m.matrix
        ORDER BY bool_or(r.kind = 'sft') DESC, max(r.finished_at) DESC NULLS LAST, m.matrix""").fetchall()]
    if value == "latest" and what == "candidate":
        if not matrices:
            raise CheckError(f"--candidate latest: {db} holds no matrix yet (run `harness matrix run` first)")
        value = matrices[0]
    run_ids, partial = None, False
    if value not in matrices:
        row = con.execute("SELECT run_id, base_run_id, status FROM runs WHERE run_id = ?", [value]).fetchone()
        if row is None:
            kinds = "no such file, and no saved baseline, matrix" if what == "baseline" else "no matrix"
            raise CheckError(f"--{what} {value}: {kinds} or run of that name in {db} "
                             f"(matrices: {', '.join(matrices) or 'none'})")
        if row[2] != "ok":
            raise CheckError(f"--{what} {value}: that run did not finish (status {row[2]})")
        run_ids, partial = list(dict.fromkeys([row[0], row[1] or row[0]])), True
    s = stats.load(con, value, run_ids)
    if s.runs.empty:
        raise CheckError(f"--{what} {value}: no finished run in {db}")
    extra = con.execute("""
        SELECT r.run_id, r.harness_version, d.content_hash, d.recipe FROM runs r
        LEFT JOIN datasets d USING (dataset_id) WHERE r.run_id IN (SELECT unnest(?))""",
                        [list(s.runs["run_id"])]).df().set_index("run_id")
    runs = _with_cells(s.runs)
    runs["harness_version"] = [extra.loc[r, "harness_version"] for r in runs["run_id"]]
    runs["data"] = [None if pd.isna(d) else json.dumps({"dataset_id": d, "content_hash": extra.loc[r, "content_hash"],
                                                        "recipe": json.loads(extra.loc[r, "recipe"])})
                    for r, d in zip(runs["run_id"], runs["dataset_id"])]
    s.runs = runs
    # the examples as the runs saw them: a changed task file, limit or prompt template changes this
    rows = con.execute("""SELECT task, doc_id, any_value(prompt) AS prompt, any_value(target) AS target
                          FROM samples WHERE run_id IN (SELECT unnest(?)) GROUP BY ALL ORDER BY task, doc_id""",
                       [list(runs["run_id"])]).fetchall()
    by_task: dict[str, list] = {}
    for task, *rest in rows:
        by_task.setdefault(task, []).append(rest)
    examples = {t: f"{stable_hash(by_task.get(t, [])):016x}" for t in s.tasks}
    name = f"run {value}" if partial else f"matrix {value}"
    return Side(f"{what} {name} in {db}", name, s, examples, partial)


def _has_table(con, name: str) -> bool:
    return con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchone()[0] > 0


RUN_FIELDS = ["run_id", "kind", "model", "method", "method_kind", "arm", "seed", "base_run_id", "harness_version"]


def to_json(side: Side, opts: stats.Options) -> dict:
    """A baseline file: the runs, their configs, per-example scores keyed by (task, doc id, run/seed), and each
    cell's level per metric with its interval (for reading; the check recomputes from the scores)."""
    s, runs = side.scores, side.scores.runs
    levels = {cell: {m: dict(zip(("value", "ci_low", "ci_high"), v)) | {"n_examples": n} for m, (v, n) in ms.items()}
              for cell, ms in _levels(side, opts).items()}
    return {
        "format": FORMAT, "harness_version": __version__,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": side.name,
        "runs": [{k: _plain(r[k]) for k in RUN_FIELDS} | {"config": json.loads(r["config"]),
                                                          "data": _json(r["data"])}
                 for _, r in runs.iterrows()],
        "tasks": {t: {"group": task.group, "metric": task.metric, "higher_is_better": task.higher_is_better,
                      "examples": side.examples[t], "doc_ids": task.doc_ids.tolist(),
                      "weights": None if task.weights is None else task.weights.tolist(),
                      "scores": {rid: [None if np.isnan(x) else float(x) for x in task.scores[i]]
                                 for i, rid in enumerate(runs["run_id"])}}
                  for t, task in s.tasks.items()},
        "levels": levels,
    }


def _json(v):
    """A JSON column's value (pandas may hold a missing one as NaN)."""
    return json.loads(v) if isinstance(v, str) else None


def _plain(v):
    """numpy/pandas scalars -> JSON values (NaN -> null)."""
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return None
    return v.item() if hasattr(v, "item") else v


def from_json(body: dict, label: str) -> Side:
    """A baseline file's contents back into a Side; a wrong structure fails naming the key."""
    def need(obj, key, tp, where):
        if not isinstance(obj, dict) or not isinstance(obj.get(key), tp):
            raise CheckError(f"{label}: {where}{key}: missing or not {tp.__name__}; not a `harness check "
                             f"--export-baseline` file?")
        return obj[key]

    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise CheckError(f"{label}: not a harness baseline (expected \"format\": \"{FORMAT}\")")
    runs = pd.DataFrame([{k: r.get(k) for k in RUN_FIELDS} | {"config": json.dumps(need(r, "config", dict, "runs.")),
                                                            "data": json.dumps(r["data"]) if r.get("data") else None}
                         for r in need(body, "runs", list, "")])
    if runs.empty:
        raise CheckError(f"{label}: runs: the baseline holds no run")
    runs["row"] = np.arange(len(runs))
    s = stats.Scores(str(body.get("source", label)), _with_cells(runs))
    examples = {}
    for t, spec in need(body, "tasks", dict, "").items():
        doc_ids = np.asarray(need(spec, "doc_ids", list, f"tasks.{t}."), dtype=np.int64)
        scores = need(spec, "scores", dict, f"tasks.{t}.")
        matrix = np.full((len(runs), len(doc_ids)), np.nan)
        for i, rid in enumerate(runs["run_id"]):
            row = scores.get(rid)
            if row is None or len(row) != len(doc_ids):
                raise CheckError(f"{label}: tasks.{t}.scores.{rid}: expected {len(doc_ids)} scores, one per doc id")
            matrix[i] = [np.nan if x is None else x for x in row]
        w = spec.get("weights")
        s.tasks[t] = stats.Task(t, need(spec, "group", str, f"tasks.{t}."), need(spec, "metric", str, f"tasks.{t}."),
                                bool(spec.get("higher_is_better", True)), doc_ids, matrix,
                                None if w is None else np.asarray(w, dtype=float))
        examples[t] = need(spec, "examples", str, f"tasks.{t}.")
    return Side(label, body.get("source", label), s, examples)


def load_side(value: str, db: Path, what: str) -> Side:
    """A baseline or candidate: an existing JSON file (baselines only), else a name in the database."""
    path = Path(value)
    if what == "baseline" and (path.is_file() or value.endswith(".json")):
        if not path.is_file():
            raise CheckError(f"--baseline {value}: file not found (write one with `harness check "
                             f"--export-baseline FILE`)")
        try:
            body = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CheckError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        return from_json(body, f"baseline {path}")
    try:
        with store.reader(db) as con:
            return from_db(con, value, db, what)
    except FileNotFoundError as e:
        raise CheckError(f"--{what} {value}: {e}") from None


# ---------------------------------------------------------------------------------------------------------------
# Metrics and levels


def _metrics(s: stats.Scores) -> list[stats.Metric]:
    """learn, forget and each task's primary metric (stats.metrics_for's definitions)."""
    return [m for m in stats.metrics_for(s) if m.name != "learn_gain" and not m.name.endswith(":vs_base")]


def _base_rows(runs: pd.DataFrame) -> np.ndarray:
    row_of = dict(zip(runs["run_id"], runs["row"]))
    return np.array([row_of.get(b, r) for b, r in zip(runs["base_run_id"], runs["row"])])


def _values(s: stats.Scores, counts: dict[str, np.ndarray], metrics: list[stats.Metric]) -> dict[str, np.ndarray]:
    """(runs, B + 1) bootstrap values of each metric, from the given example resamples of each task."""
    means = {t: stats.boot_means(task.scores, counts[t], task.weights) for t, task in s.tasks.items()}
    return {m.name: stats.metric_samples(m, means, _base_rows(s.runs)) for m in metrics}


def _applies(m: stats.Metric, cell: str) -> bool:
    """A metric against the base model is 0 by definition for the base model itself."""
    return not (m.vs_base and cell.endswith("/base"))


def _levels(side: Side, opts: stats.Options) -> dict[str, dict[str, tuple[tuple, int]]]:
    """cell -> metric -> ((value, ci_low, ci_high), n examples): the numbers `harness report` shows for an arm."""
    s = side.scores
    mets = _metrics(s)
    values = _values(s, {t: stats.example_counts(len(task.doc_ids), opts, t) for t, task in s.tasks.items()}, mets)
    out: dict = {}
    for cell, g in s.runs.sort_values("seed").groupby("cell", sort=False):
        rows = g["row"].to_numpy()
        sc = stats.seed_counts(len(rows), opts.n_boot, opts.seed)
        out[cell] = {m.name: (stats.interval(stats.over_seeds(values[m.name][rows], sc), opts.confidence),
                              sum(len(s.tasks[t].doc_ids) for t in m.coefs)) for m in mets if _applies(m, cell)}
    return out


# ---------------------------------------------------------------------------------------------------------------
# What must match, and what changed


def _sections(run: pd.Series) -> dict[str, object]:
    cfg = json.loads(run["config"])
    data = _json(run["data"])
    return {"model": {"model_fingerprint": cfg.get("model_fingerprint")},
            "method": cfg.get("method_cfg"), "budget": cfg.get("budget"), "train": cfg.get("train"),
            "data": None if data is None else {"content_hash": data.get("content_hash"), "recipe": data.get("recipe")},
            "harness_version": run["harness_version"]}


def _diff(a, b, path: str) -> list[str]:
    """Leaf-level differences 'path: a -> b' between two JSON-like values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _diff(a.get(k), b.get(k), f"{path}.{k}")]
    return [] if a == b else [f"{path}: {_short(a)} -> {_short(b)}"]


def _short(v) -> str:
    return f"{v[:12]}…" if isinstance(v, str) and len(v) > 24 else json.dumps(v)  # content hashes: 64 digits


def _eval_diffs(b: Side, c: Side) -> list[str]:
    out = []
    for t in sorted(set(b.scores.tasks) | set(c.scores.tasks)):
        tb, tc = b.scores.tasks.get(t), c.scores.tasks.get(t)
        if tb is None or tc is None:
            out.append(f"eval: task {t} only in the {'candidate' if tb is None else 'baseline'}")
            continue
        for what, vb, vc in (("group", tb.group, tc.group), ("metric", tb.metric, tc.metric),
                             ("examples", f"{len(tb.doc_ids)} examples {b.examples[t][:8]}",
                              f"{len(tc.doc_ids)} examples {c.examples[t][:8]}")):
            if vb != vc:
                out.append(f"eval: {t} {what}: {vb} -> {vc}")
    return out


def _one_line(items: list[str], limit: int = 6) -> str:
    return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def _mismatches(baseline: Side, candidate: Side, policy: Policy, cells: list[str]) -> tuple[list[str], list[str]]:
    """Differences between the sides: (those the policy requires to match, the rest: the change under test)."""
    diffs = [("eval", d) for d in _eval_diffs(baseline, candidate)]
    for cell in cells:
        sb, sc = (_sections(x.scores.runs[x.scores.runs["cell"] == cell].iloc[0]) for x in (baseline, candidate))
        diffs += [(key, f"{cell}: {d}") for key in sb if not (key == "data" and cell.endswith("/base"))
                  for d in _diff(sb[key], sc[key], key)]
    return [d for k, d in diffs if k in policy.match], [d for k, d in diffs if k not in policy.match]


# ---------------------------------------------------------------------------------------------------------------
# The comparison


@dataclass
class Result:
    baseline: str
    candidate: str
    rows: pd.DataFrame  # one per (cell, metric)
    notes: list[str]  # how each cell was paired, and the caveats
    changes: list[str]  # what differs between the sides without being required to match
    policy: Policy

    @property
    def regressions(self) -> pd.DataFrame:
        return self.rows[self.rows["gated"] & (self.rows["status"] == "regression")]

    @property
    def passed(self) -> bool:
        return self.regressions.empty


def _gated_metrics(policy: Policy, tasks: dict[str, stats.Task], fail: Fail) -> set[str]:
    names = set()
    for i, g in enumerate(policy.gate):
        if g == "all":
            names |= {"learn", "forget", *tasks}
        elif g in ("learn_tasks", "forget_tasks"):
            names |= {t for t, task in tasks.items() if task.group == g.split("_")[0]}
        elif g in ("learn", "forget") or g in tasks:
            names.add(g)
        else:
            fail(("gate", i), f"unknown metric {g!r}; expected one of {', '.join(GATE_WORDS)} or a task of the "
                              f"baseline ({', '.join(tasks)})")
    return names


def _gated_cells(policy: Policy, cells: list[str], fail: Fail) -> set[str]:
    if policy.cells == "all":
        return set(cells)
    out = set()
    for i, name in enumerate(policy.cells):
        hit = {c for c in cells if c == name or c.split("/", 1)[1] == name}
        if not hit:
            short = [c.split("/", 1)[1] for c in cells]
            fail(("cells", i), f"unknown cell {name!r}; expected all or one of {', '.join(short)}")
        out |= hit
    return out


def compare(baseline: Side, candidate: Side, policy: Policy = Policy(), fail: Fail | None = None) -> Result:
    """Every (cell, metric) of the baseline against the candidate. Raises CheckError for what must match and
    does not."""
    def plain_fail(path: tuple, msg: str) -> NoReturn:
        raise SpecError(f"policy: {'.'.join(map(str, path))}: {msg}")

    fail = fail or plain_fail
    opts = stats.Options(n_boot=policy.n_boot, alpha=policy.alpha)
    b, c = baseline.scores, candidate.scores
    common = [t for t in b.tasks if t in c.tasks and b.tasks[t].metric == c.tasks[t].metric]
    b_cells, c_cells = list(dict.fromkeys(b.runs["cell"])), list(dict.fromkeys(c.runs["cell"]))
    cells = [x for x in b_cells if x in c_cells]
    gated_cells = _gated_cells(policy, b_cells, fail)
    gated_metrics = _gated_metrics(policy, b.tasks, fail)
    problems, changes = _mismatches(baseline, candidate, policy, cells)
    problems += [f"cell {x} is in the baseline but not in the candidate" for x in b_cells
                 if x not in c_cells and x in gated_cells and not candidate.partial]
    problems += [f"gated metric {t}: not in the candidate" for t in sorted(gated_metrics)
                 if t in b.tasks and t not in common and "eval" not in policy.match]
    if problems:
        raise CheckError(f"{baseline.label} and {candidate.label} differ in what the policy requires to match "
                         f"(match: {', '.join(policy.match)}): {_one_line(problems)}")
    if not common:
        raise CheckError(f"no task in common: baseline {', '.join(b.tasks)}; candidate {', '.join(c.tasks)}")
    if not cells:
        raise CheckError(f"no cell in common: baseline {', '.join(b_cells)}; candidate {', '.join(c_cells)}")
    notes = [f"{cell}: in the candidate only (not compared)" for cell in c_cells if cell not in b_cells]

    # both sides restricted to the tasks in common; resamples shared where the examples are the same (paired)
    b_s, c_s = (dataclasses.replace(x, tasks={t: x.tasks[t] for t in common}) for x in (b, c))
    mets = _metrics(b_s)
    paired_ex = {t: baseline.examples[t] == candidate.examples[t] and
                 np.array_equal(b_s.tasks[t].doc_ids, c_s.tasks[t].doc_ids) for t in common}
    counts_b = {t: stats.example_counts(len(b_s.tasks[t].doc_ids), opts, t) for t in common}
    counts_c = {t: counts_b[t] if paired_ex[t] else stats.example_counts(len(c_s.tasks[t].doc_ids), opts,
                                                                          f"candidate:{t}") for t in common}
    unpaired_tasks = [t for t in common if not paired_ex[t]]
    if unpaired_tasks:
        notes.append(f"examples differ in {', '.join(unpaired_tasks)}: compared unpaired over those examples")
    vb, vc = _values(b_s, counts_b, mets), _values(c_s, counts_c, mets)

    rows = []
    for cell in cells:
        gb = b_s.runs[b_s.runs["cell"] == cell].sort_values("seed")
        gc = c_s.runs[c_s.runs["cell"] == cell].sort_values("seed")
        seeds_b, seeds_c = [_plain(x) for x in gb["seed"]], [_plain(x) for x in gc["seed"]]
        both = [x for x in seeds_b if x in seeds_c]
        if both:  # paired by seed: the same seeds on both sides, in the same order (the base model: seed None)
            ib = np.array([dict(zip(seeds_b, gb["row"]))[x] for x in both])
            ic = np.array([dict(zip(seeds_c, gc["row"]))[x] for x in both])
            scount = stats.seed_counts(len(both), opts.n_boot, opts.seed)
            left = sorted(set(seeds_b + seeds_c) - set(both), key=str)
            pairing = "seeds, examples" if not unpaired_tasks else "seeds"
            if left:
                notes.append(f"{cell}: paired on seeds {both}; seeds {left} ran on one side only and are left out")
            if len(both) == 1 and not cell.endswith("/base"):
                notes.append(f"{cell}: one seed: the interval counts example noise only, not seed-to-seed noise "
                             f"(the allowance must absorb that; run more seeds for a test that counts it)")
        else:  # no seed in common: each side's seeds resampled on their own
            ib, ic = gb["row"].to_numpy(), gc["row"].to_numpy()
            pairing = "examples" if not unpaired_tasks else "unpaired"
            notes.append(f"{cell}: seeds differ (baseline {seeds_b}, candidate {seeds_c}): compared unpaired over "
                         f"seeds")
        for m in mets:
            if not _applies(m, cell):
                continue
            if both:
                diff = stats.over_seeds(vc[m.name][ic] - vb[m.name][ib], scount)
            else:
                diff = stats.over_seeds(vc[m.name][ic], stats.seed_counts(len(ic), opts.n_boot, opts.seed + 1)) - \
                    stats.over_seeds(vb[m.name][ib], stats.seed_counts(len(ib), opts.n_boot, opts.seed))
            w = stats.wald(diff, opts.confidence)
            base_value = float(np.mean(vb[m.name][ib, 0]))
            rows.append({"cell": cell, "metric": m.name, "higher_is_better": m.higher_is_better,
                         "gated": cell in gated_cells and m.name in gated_metrics,
                         "baseline": base_value, "candidate": float(np.mean(vc[m.name][ic, 0])),
                         "change": w["diff"], "ci_low": w["ci_low"], "ci_high": w["ci_high"], "p_value": w["p_value"],
                         "allowed": _allowed(policy, m, base_value), "paired": pairing,
                         "n_examples": sum(len(b_s.tasks[t].doc_ids) for t in m.coefs)})
    df = pd.DataFrame(rows)
    df["p_adjusted"] = np.nan
    for gated in (True, False):  # the gated rows are one family; the rows shown for information another
        sel = df["gated"] == gated
        if sel.any():
            df.loc[sel, "p_adjusted"] = df.loc[sel, "p_value"] if policy.correction == "none" else \
                stats.adjust(df.loc[sel, "p_value"], "holm" if policy.correction == "holm" else "fdr_bh")
    df["status"] = [_status(r, policy.alpha) for r in df.itertuples()]
    return Result(baseline.label, candidate.label, df, list(dict.fromkeys(notes)), changes, policy)


def _allowed(policy: Policy, m: stats.Metric, baseline: float) -> float:
    """How far the metric may move the wrong way: forget has its own allowance; otherwise the larger of the absolute
    and the relative allowance (a missing one counts as 0)."""
    if m.name == "forget":
        return policy.forget_max_growth or 0.0
    a = policy.max_drop
    return max(a.abs or 0.0, (a.rel or 0.0) * abs(baseline) if np.isfinite(baseline) else 0.0)


def _status(r, alpha: float) -> str:
    """regression / improved: beyond the allowance AND significant; otherwise why not."""
    if not np.isfinite(r.change):
        return "n/a"
    if r.change == 0:
        return "no change"
    worse = (r.change < 0) == r.higher_is_better
    if abs(r.change) <= r.allowed:
        return "within allowance"
    if not r.p_adjusted < alpha:
        return "not significant"
    return "regression" if worse else "improved"


# ---------------------------------------------------------------------------------------------------------------
# Output: the table (terminal and markdown), JUnit XML, the database


COLUMNS = ["cell", "metric", "gate", "baseline", "candidate", "change [95% CI]", "allowed", "p (adj.)", "verdict"]


def _num(v: float) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.3f}" if abs(v) < 100 else f"{v:,.1f}"


def table(res: Result) -> list[list[str]]:
    out = []
    for r in res.rows.itertuples():
        sign = "-" if r.higher_is_better else "+"
        out.append([r.cell, r.metric, "yes" if r.gated else "",
                    _num(r.baseline), _num(r.candidate),
                    f"{r.change:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]", f"{sign}{_num(r.allowed)}",
                    _p(r.p_adjusted), _shown_status(r)])
    return out


def _p(p: float) -> str:
    return "–" if not np.isfinite(p) else "<0.0001" if p < 1e-4 else f"{p:.2g}"


def _shown_status(r) -> str:
    if r.status != "regression":
        return r.status
    return "REGRESSION" if r.gated else "regression (not gated)"


def verdict(res: Result) -> str:
    reg, rows = res.regressions, res.rows
    gated = int(rows["gated"].sum())
    better = rows[rows["status"] == "improved"]
    tail = f"; {len(better)} improved ({', '.join(better['cell'] + ' ' + better['metric'])})" if len(better) else ""
    if res.passed:
        return f"PASS: no regression in {gated} gated metrics{tail}"
    which = ", ".join(f"{r.cell} {r.metric} {r.change:+.3f} (p {_p(r.p_adjusted).replace('<', '< ')})"
                      for r in reg.itertuples())
    return f"FAIL: {len(reg)} of {gated} gated metrics regressed: {which}{tail}"


def markdown(res: Result) -> str:
    """The result for a CI step summary (GitHub-flavoured markdown)."""
    def cell(v: str) -> str:
        return v.replace("|", "\\|")

    lines = [f"### harness check: {verdict(res)}", "", f"{cell(res.baseline)} vs {cell(res.candidate)}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in table(res):
        r[-1] = f"**{r[-1]}**" if r[-1] == "REGRESSION" else r[-1]
        lines.append("| " + " | ".join(cell(v) for v in r) + " |")
    lines += [""] + [f"- {cell(n)}" for n in res.notes + [f"changed since the baseline: {c}" for c in res.changes]]
    lines.append(_policy_line(res.policy))
    return "\n".join(lines) + "\n"


def _policy_line(p: Policy) -> str:
    return (f"A row is a regression when it moves the wrong way by more than `allowed` AND its paired bootstrap "
            f"p-value, {p.correction}-corrected over the gated rows, is below {p.alpha}.")


def junit(res: Result) -> str:
    """JUnit XML: one testcase per gated (cell, metric), a <failure> for each regression."""
    gated = res.rows[res.rows["gated"]]
    failures = int((gated["status"] == "regression").sum())
    suite = ET.Element("testsuite", name="harness check", tests=str(len(gated)), failures=str(failures),
                       errors="0", skipped="0",
                       timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    props = ET.SubElement(suite, "properties")
    for k, v in (("baseline", res.baseline), ("candidate", res.candidate)):
        ET.SubElement(props, "property", name=k, value=v)
    for r in gated.itertuples():
        case = ET.SubElement(suite, "testcase", classname=f"harness.check.{r.cell}", name=r.metric)
        text = (f"{r.metric} of {r.cell}: baseline {_num(r.baseline)}, candidate {_num(r.candidate)}, change "
                f"{r.change:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}], allowed {_num(r.allowed)}, "
                f"p={r.p_adjusted:.3g} ({res.policy.correction}); paired by {r.paired}; {r.status}")
        if r.status == "regression":
            ET.SubElement(case, "failure", message=f"{r.metric} regressed by {r.change:+.4f}",
                          type="regression").text = text
        else:
            ET.SubElement(case, "system-out").text = text
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def write_text(path: Path, text: str) -> None:
    """Atomic: a reader sees the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def record(db: Path, res: Result) -> str:
    """Keep the result in check_results (one transaction); returns the check id."""
    now = datetime.datetime.now(datetime.timezone.utc)
    check_id = f"{stable_hash(res.baseline, res.candidate, now.isoformat()):016x}"[:12]
    df = res.rows[["cell", "metric", "gated", "baseline", "candidate", "change", "ci_low", "ci_high", "allowed",
                   "p_value", "p_adjusted", "paired", "status"]].rename(
        columns={"baseline": "baseline_value", "candidate": "candidate_value"})
    df.insert(0, "check_id", check_id)
    df.insert(1, "checked_at", now.replace(tzinfo=None))
    df.insert(2, "baseline", res.baseline)
    df.insert(3, "candidate", res.candidate)
    df["policy"] = json.dumps(dataclasses.asdict(res.policy))
    with store.writer(db) as con:
        con.register("_check", df)
        con.execute("INSERT INTO check_results BY NAME SELECT * FROM _check")
        con.unregister("_check")
    return check_id


def save_baseline(db: Path, name: str, body: dict) -> None:
    with store.writer(db) as con:
        con.execute("INSERT OR REPLACE INTO check_baselines (name, source, body) VALUES (?, ?, ?)",
                    [name, body["source"], json.dumps(body)])
