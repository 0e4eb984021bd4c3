"""The two sides of `harness check`: runs and their per-example scores, from the database or a baseline file.

A cell is (model, method, arm) over its seeds; the base model is the cell model/base. A baseline file (written by
`harness check --export-baseline`) holds the runs, their configs, per-example scores and each cell's levels.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness import __version__, store
from harness.analysis import stats
from harness.analysis.check.policy import CheckError
from harness.core.ids import stable_hash

FORMAT = "harness-check-baseline/1"


@dataclass
class Side:
    label: str  # what was loaded, for messages: "baseline tests/baselines/check.json"
    name: str  # what it is, without where: "matrix check", "run 1a2b3c4d5e6f"
    scores: stats.Scores  # runs has, besides stats.load's columns: cell, harness_version, data (JSON)
    examples: dict[str, str]  # task -> fingerprint of the examples as evaluated (doc id, prompt, target)
    partial: bool = False  # one run id: only its cell is compared
    contamination: list[tuple[str, str, int]] = field(default_factory=list)  # (arm, task, overlapping rows)


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
    matrices = store.matrices(con)
    if value == "latest" and what == "candidate":
        value = store.latest_matrix(con)
        if value is None:
            raise CheckError(f"--candidate latest: {db} holds no matrix yet (run `harness matrix run` first)")
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
    arms = list(dict.fromkeys(runs["arm"].dropna()))
    dirty = con.execute("""SELECT arm, task, overlapping_rows FROM contamination WHERE matrix = ? AND overlapping_rows > 0
                           AND arm IN (SELECT unnest(?)) ORDER BY arm, task""", [s.matrix, arms]).fetchall() \
        if _has_table(con, "contamination") else []
    return Side(f"{what} {name} in {db}", name, s, examples, partial, dirty)


def _has_table(con, name: str) -> bool:
    return con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchone()[0] > 0


RUN_FIELDS = ["run_id", "kind", "model", "method", "method_kind", "arm", "seed", "base_run_id", "harness_version"]


def to_json(side: Side, opts: stats.Options) -> dict:
    """A baseline file: the runs, their configs, per-example scores keyed by (task, doc id, run/seed), and each
    cell's level per metric with its interval (for reading; the check recomputes from the scores)."""
    s, runs = side.scores, side.scores.runs
    levels = {cell: {m: dict(zip(("value", "ci_low", "ci_high"), v)) | {"n_examples": n} for m, (v, n) in ms.items()}
              for cell, ms in cell_levels(side, opts).items()}
    return {
        "format": FORMAT, "harness_version": __version__,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": side.name,
        "runs": [{k: plain(r[k]) for k in RUN_FIELDS} | {"config": json.loads(r["config"]),
                                                          "data": json_value(r["data"])}
                 for _, r in runs.iterrows()],
        "tasks": {t: {"group": task.group, "metric": task.metric, "higher_is_better": task.higher_is_better,
                      "examples": side.examples[t], "doc_ids": task.doc_ids.tolist(),
                      "weights": None if task.weights is None else task.weights.tolist(),
                      "scores": {rid: [None if np.isnan(x) else float(x) for x in task.scores[i]]
                                 for i, rid in enumerate(runs["run_id"])}}
                  for t, task in s.tasks.items()},
        "levels": levels,
    }


def json_value(v):
    """A JSON column's value (pandas may hold a missing one as NaN)."""
    return json.loads(v) if isinstance(v, str) else None


def plain(v):
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


def metric_list(s: stats.Scores) -> list[stats.Metric]:
    """learn, forget and each task's primary metric (stats.metrics_for's definitions)."""
    return [m for m in stats.metrics_for(s) if m.name != "learn_gain" and not m.name.endswith(":vs_base")]


def base_rows(runs: pd.DataFrame) -> np.ndarray:
    row_of = dict(zip(runs["run_id"], runs["row"]))
    return np.array([row_of.get(b, r) for b, r in zip(runs["base_run_id"], runs["row"])])


def boot_values(s: stats.Scores, counts: dict[str, np.ndarray], metrics: list[stats.Metric]) -> dict[str, np.ndarray]:
    """(runs, B + 1) bootstrap values of each metric, from the given example resamples of each task."""
    means = {t: stats.boot_means(task.scores, counts[t], task.weights) for t, task in s.tasks.items()}
    return {m.name: stats.metric_samples(m, means, base_rows(s.runs)) for m in metrics}


def applies(m: stats.Metric, cell: str) -> bool:
    """A metric against the base model is 0 by definition for the base model itself."""
    return not (m.vs_base and cell.endswith("/base"))


def cell_levels(side: Side, opts: stats.Options) -> dict[str, dict[str, tuple[tuple, int]]]:
    """cell -> metric -> ((value, ci_low, ci_high), n examples): the numbers `harness report` shows for an arm (the
    interval of stats.seed_test). For reading only: the check recomputes everything from the scores."""
    s = side.scores
    mets = metric_list(s)
    values = boot_values(s, {t: stats.example_counts(len(task.doc_ids), opts, t) for t, task in s.tasks.items()}, mets)
    out: dict = {}
    for cell, g in s.runs.sort_values("seed").groupby("cell", sort=False):
        rows = g["row"].to_numpy()
        out[cell] = {m.name: (tuple(stats.seed_test(values[m.name][rows], confidence=opts.confidence)[k]
                                    for k in ("diff", "ci_low", "ci_high")),
                              sum(len(s.tasks[t].doc_ids) for t in m.coefs)) for m in mets if applies(m, cell)}
    return out


def save_baseline(db: Path, name: str, body: dict) -> None:
    with store.writer(db) as con:
        con.execute("INSERT OR REPLACE INTO check_baselines (name, source, body) VALUES (?, ?, ?)",
                    [name, body["source"], json.dumps(body)])
