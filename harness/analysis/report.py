"""`harness report`: one self-contained HTML file per matrix, with the statistics behind every number.

Reads the database read-only, computes the statistics (harness/analysis/stats/), writes them to the stat_* tables (one
short write transaction), and renders charts (Vega-Lite specs built with altair, drawn in the browser by the Vega
libraries inlined into the file: ~0.9 MB, against ~4.7 MB for plotly's bundle) and tables through a jinja2 template
with autoescaping, so any text from the data (prompts, responses, names) is shown as text, never run.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from harness import __version__, store
from harness.analysis import charts, stats
from harness.analysis.charts import arm_wide
from harness.core.atomic import atomic_file
from harness.core.fmt import number

TEMPLATE = Path(__file__).resolve().parent / "templates" / "report.html.j2"
BROWSER_DOCS = 8  # examples per task in the sample browser
LOSS_POINTS = 200  # points per loss curve (a longer run is averaged into this many buckets)


class ReportError(ValueError):
    pass


def resolve_matrix(con, name: str | None, db: Path) -> str:
    """The named matrix, or the most recently run one."""
    known = store.matrices(con)
    if not known:
        raise ReportError(f"{db}: no matrix has been run yet (run `harness matrix run` first)")
    if name is None:
        return store.latest_matrix(con)
    if name not in known:
        raise ReportError(f"{db}: no matrix named {name!r}; expected one of {', '.join(known)}")
    return name


def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script. Building it takes seconds, so it is cached per version."""
    import altair as alt
    import vl_convert

    version = alt.SCHEMA_VERSION.lstrip("v").rsplit(".", 1)[0]  # the Vega-Lite that altair writes specs for
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harness"
    path = cache / f"vega-embed-{vl_convert.get_vega_embed_version()}-vl{version}.js"
    if path.exists():
        return path.read_text()
    js = vl_convert.javascript_bundle(vl_version=version)
    with atomic_file(path) as tmp:
        tmp.write_text(js)
    return js


# ---------------------------------------------------------------------------------------------------------------
# Numbers to text


def _count(v) -> str:
    return "–" if v is None or pd.isna(v) else f"{round(float(v)):,}"


def _cost(v, column: str) -> str:
    return _count(v) if column == "train_tokens" or v is None or pd.isna(v) else f"{float(v):.3g}"


def _ci(v, lo, hi, digits: int = 3, scale: float = 1.0, suffix: str = "") -> str | tuple[str, str]:
    """A value and its interval, shown on two lines by the template."""
    if v is None or pd.isna(v):
        return "–"
    return f"{v * scale:.{digits}f}{suffix}", f"[{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"


def _p(p) -> str:
    if p is None or pd.isna(p):
        return "–"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _df(v) -> str:
    """A test's degrees of freedom (its seed part's): infinite with one seed."""
    if v is None or pd.isna(v):
        return "–"
    return "∞" if np.isinf(v) else f"{v:.3g}"


# ---------------------------------------------------------------------------------------------------------------
# What was run


def matrix_of(s: stats.Scores):
    """The matrix spec, as far as its runs' configs tell it (for spec.matched_description)."""
    from harness.spec import Budget, Eval, Matrix, Method, Train

    sft = s.runs[s.runs["kind"] == "sft"]
    if sft.empty:
        return None
    cfg = json.loads(sft["config"].iloc[0])

    def make(cls, d):
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    methods = {m: make(Method, json.loads(c)["method_cfg"]) for m, c in zip(sft["method"], sft["config"])}
    return Matrix(name=s.matrix, models=list(dict.fromkeys(sft["model"])), methods=methods,
                  seeds=sorted(int(x) for x in sft["seed"].unique()), budget=make(Budget, cfg["budget"]),
                  train=make(Train, cfg["train"]), eval=make(Eval, cfg["eval"]))


def data_cards(con, runs: pd.DataFrame) -> list[dict]:
    """One card per arm: its source, each curation step with counts in and out, and the main reasons for drops."""
    arms = runs[runs["kind"] == "sft"].drop_duplicates("arm")[["arm", "role", "dataset_id"]]
    if arms.empty:
        return []
    con.register("_card_arms", arms)
    ds = con.execute("""SELECT a.arm, d.dataset_id, d.recipe, d.n_examples, d.n_by_skill, d.parent
                        FROM _card_arms a LEFT JOIN datasets d USING (dataset_id)""").df()
    steps = con.execute("""SELECT a.arm, s.step_index, s.step, s.params, s.n_in, s.n_out
                           FROM _card_arms a JOIN data_steps s USING (dataset_id) ORDER BY a.arm, s.step_index""").df()
    # what train.max_length / too_long cost each arm (the same for every cell of an arm and model)
    lengths = con.execute("""
        SELECT arm, max(rows_over_length) AS over, max(rows_dropped) AS dropped, max(trained_tokens_lost) AS lost,
               any_value(json_extract_string(config, '$.train.max_length')) AS max_length,
               any_value(coalesce(json_extract_string(config, '$.train.too_long'), 'truncate')) AS too_long,
               any_value(coalesce(json_extract_string(config, '$.train.loss_on'), 'all')) AS loss_on,
               any_value(path) AS path
        FROM runs JOIN datasets USING (dataset_id) WHERE run_id IN (SELECT unnest(?)) GROUP BY arm""",
                          [list(runs.loc[runs["kind"] == "sft", "run_id"])]).df().set_index("arm")
    reasons = con.execute("""
        SELECT a.arm, d.step_index, regexp_replace(d.reason, ' (of|for) .*| score .*', '') AS why, count(*) AS n
        FROM _card_arms a JOIN data_decisions d USING (dataset_id) GROUP BY a.arm, d.step_index, why
        QUALIFY row_number() OVER (PARTITION BY a.arm, d.step_index ORDER BY count(*) DESC, why) <= 4""").df()
    con.unregister("_card_arms")
    cards = []
    for arm, role in zip(arms["arm"], arms["role"]):
        d = ds[ds["arm"] == arm].iloc[0]
        recipe = json.loads(d["recipe"]) if isinstance(d["recipe"], str) else {}
        src = recipe.get("source", {})
        source = src.get("kind", "?") + (f", {src['size']:,} examples, seed {src.get('seed')}" if "size" in src
                                         else f" {src.get('path', '')}")
        defects = ", ".join(f"{k} {v:.0%}" for k, v in (src.get("defects") or {}).items() if v)
        rows = []
        for _, st in steps[steps["arm"] == arm].iterrows():
            why = reasons[(reasons["arm"] == arm) & (reasons["step_index"] == st["step_index"])]
            params = {k: v for k, v in json.loads(st["params"] or "{}").items() if k != "like_dataset"}
            rows.append({"step": st["step"], "params": ", ".join(f"{k}={v}" for k, v in params.items()),
                         "n_in": f"{st['n_in']:,}", "n_out": f"{st['n_out']:,}",
                         "dropped": f"{st['n_in'] - st['n_out']:,}",
                         "why": "; ".join(f"{w} ({n:,})" for w, n in zip(why["why"], why["n"]))})
        skills = json.loads(d["n_by_skill"]) if isinstance(d["n_by_skill"], str) else {}
        cards.append({"arm": arm, "role": role or "?", "dataset_id": d["dataset_id"], "source": source,
                      "defects": defects, "steps": rows, **_training_view(lengths.loc[arm] if arm in lengths.index
                                                                         else None),
                      "n_examples": "?" if pd.isna(d["n_examples"]) else f"{int(d['n_examples']):,}",
                      "skills": ", ".join(f"{k} {v:,}" for k, v in sorted(skills.items()))})
    return cards


def _training_view(t) -> dict:
    """An arm's card lines on training: what max_length cost, and one example with the turns that carry loss."""
    from harness.data.cards import clip, example_turns, showcase

    if t is None:
        return {}
    over = "" if pd.isna(t["over"]) else (
        f"{int(t['over']):,} rows longer than max_length {t['max_length']} ({t['too_long']}: "
        f"{int(t['dropped']):,} dropped, {int(t['lost']):,} trained tokens lost)")
    example = []
    data = Path(str(t["path"])) / "data.jsonl"
    if data.exists():
        with data.open() as f:
            rows = [json.loads(line) for _, line in zip(range(200), f)]
        example = [{"role": r, "text": clip(x), "trained": k} for r, x, k in example_turns(showcase(rows), t["loss_on"])]
    return {"lengths": over, "loss_on": t["loss_on"], "example": example}


def contamination(con, matrix: str) -> list[list[str]]:
    """The matrix run's contamination audit: per arm and task, training rows overlapping evaluation documents."""
    if not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'contamination'").fetchone()[0]:
        return []  # a database from before migration 6
    rows = con.execute("""SELECT arm, task, task_group, overlapping_rows, train_rows, overlapping_docs, eval_docs,
                                 method, n, examples FROM contamination WHERE matrix = ? ORDER BY arm, task_group, task""",
                       [matrix]).fetchall()
    return [[arm, task, group, f"{hit:,} of {n_rows:,}", f"{docs} of {n_docs}", f"{method} (n={n})",
             ", ".join(f"{e} ~ doc {d}" for e, d in json.loads(ex))]
            for arm, task, group, hit, n_rows, docs, n_docs, method, n, ex in rows]


def loss_curves(con, runs: pd.DataFrame) -> pd.DataFrame:
    sft = runs[runs["kind"] == "sft"][["run_id", "method", "arm", "seed"]]
    if sft.empty:
        return pd.DataFrame(columns=["run_id", "method", "arm", "seed", "step", "loss"])
    con.register("_loss_runs", sft)
    df = con.execute(f"""
        WITH t AS (SELECT s.run_id, s.step, s.loss,
                          greatest(1, ceil(max(s.step) OVER (PARTITION BY s.run_id) / {LOSS_POINTS}))::INT AS k
                   FROM train_steps s JOIN _loss_runs USING (run_id))
        SELECT r.run_id, r.method, r.arm, r.seed, min(t.step) + 1 AS step, avg(t.loss) AS loss
        FROM t JOIN _loss_runs r USING (run_id) GROUP BY r.run_id, r.method, r.arm, r.seed, t.step // t.k
        ORDER BY r.run_id, step""").df()
    con.unregister("_loss_runs")
    return df


def sample_browser(con, runs: pd.DataFrame) -> dict | None:
    """For each task with text responses: the examples on which the base and one run per method x arm (the lowest
    seed) disagree most, with every response side by side."""
    pick = runs.sort_values(["kind", "model", "method", "arm", "seed"]).drop_duplicates(["model", "method", "arm"])
    pick = pick.assign(col=np.arange(len(pick)),
                       label=[f"{m} base" if k == "base" else f"{m} {me} / {a} (seed {int(s)})"
                              for m, k, me, a, s in zip(pick["model"], pick["kind"], pick["method"], pick["arm"],
                                                        pick["seed"].fillna(0))])
    con.register("_pick", pick[["run_id", "col"]])
    rows = con.execute(f"""
        WITH s AS (SELECT s.task, s.doc_id, p.col, s.prompt, s.target, s.response, s.score
                   FROM samples s JOIN _pick p USING (run_id)),
             tasks AS (SELECT task FROM s GROUP BY task HAVING max(length(response)) > 0),
             docs AS (SELECT task, doc_id FROM s JOIN tasks USING (task) GROUP BY task, doc_id
                      QUALIFY row_number() OVER (PARTITION BY task
                                                 ORDER BY coalesce(stddev_pop(score), 0) DESC, doc_id) <= {BROWSER_DOCS})
        SELECT s.* FROM s JOIN docs USING (task, doc_id) ORDER BY s.task, s.doc_id, s.col""").df()
    con.unregister("_pick")
    tasks = []
    for task, g in rows.groupby("task", sort=True):
        docs = []
        for doc_id, d in g.groupby("doc_id", sort=True):
            by_col = {int(c): (r, sc) for c, r, sc in zip(d["col"], d["response"], d["score"])}
            cells = [by_col.get(c, ("", None)) for c in range(len(pick))]
            docs.append({"doc_id": int(doc_id), "prompt": d["prompt"].iloc[0], "target": d["target"].iloc[0],
                         "cells": [{"response": r or "(empty)", "score": number(sc, 2), "ok": sc == 1}
                                   for r, sc in cells]})
        tasks.append({"task": task, "docs": docs})
    return {"labels": list(pick["label"]), "tasks": tasks} if tasks else None


# ---------------------------------------------------------------------------------------------------------------
# Tables and charts


def cost_axis(runs: pd.DataFrame) -> tuple[str, str, str]:
    """(column, axis title, sentence): the best cost measure every trained run has."""
    sft = runs[runs["kind"] == "sft"]
    if len(sft) and sft["total_cost_usd"].notna().all():
        return "total_cost_usd", "estimated cost, training + curation (USD, log scale)", \
            "estimated US dollars per run (training device-hours x price, plus the arm's curation cost)"
    if len(sft) and sft["train_flops"].notna().all():
        return "train_flops", "training compute (FLOPs, estimate; log scale)", "estimated training FLOPs per run"
    return "train_tokens", "training tokens (non-pad tokens trained on; log scale)", \
        "training tokens per run (cost estimates in USD or FLOPs are not filled in for these runs)"


def headline(s: stats.Scores, t: stats.Tables, cost_col: str) -> tuple[list[str], list[list[str]]]:
    forget_tasks = [n for n, task in s.tasks.items() if task.group == "forget"]
    mets = ["learn", "learn_gain", "forget"] + [f"{n}:vs_base" for n in forget_tasks]
    wide = arm_wide(t.arms, mets)
    per = s.runs.groupby(["model", "method", s.runs["arm"].fillna("")]).agg(
        examples=("examples", "mean"), epochs=("epochs", "mean"), tokens=("train_tokens", "mean"),
        cost=(cost_col, "mean")).reset_index()
    wide = wide.merge(per, on=["model", "method", "arm"], how="left")
    wide["_o"] = wide["method_kind"].eq("base").map({True: 0, False: 1})
    wide = wide.sort_values(["model", "_o", "method", "role"], key=lambda c: c.map(stats.ROLE_ORDER).fillna(9)
                            if c.name == "role" else c)
    cols = ["model", "method", "arm (role)", "seeds", "examples", "epochs", f"{cost_col.replace('_', ' ')}",
            "learn", "Δ learn vs base", "forget (relative)"] + \
        [f"{n} {s.tasks[n].metric} {'lost' if s.tasks[n].higher_is_better else 'gained'}" for n in forget_tasks]
    rows = []
    for _, r in wide.iterrows():
        base = r["method_kind"] == "base"
        arm = "–" if base else r["arm"] if r["arm"] == r["role"] else f"{r['arm']} ({r['role']})"
        row = [r["model"], r["method"], arm, str(r["n_seeds"]),
               _count(r["examples"]), "–" if base else f"{r['epochs']:.2f}", _cost(r["cost"], cost_col),
               _ci(r.get("learn"), r.get("learn_lo"), r.get("learn_hi")),
               "–" if base else _ci(r.get("learn_gain"), r.get("learn_gain_lo"), r.get("learn_gain_hi"), 3),
               "–" if base else _ci(r.get("forget"), r.get("forget_lo"), r.get("forget_hi"), 1, 100, "%")]
        for n in forget_tasks:  # forgotten = -(oriented change vs base): its interval flips too
            v, lo, hi = r.get(f"{n}:vs_base"), r.get(f"{n}:vs_base_lo"), r.get(f"{n}:vs_base_hi")
            row.append("–" if base else _ci(-v, -hi, -lo, 3))
        rows.append(row)
    return cols, rows


def comparison_rows(cmp: pd.DataFrame, metrics: set[str] | None) -> list[dict]:
    out = []
    sub = cmp if metrics is None else cmp[cmp["metric"].isin(metrics)]
    for _, c in sub.iterrows():
        a = c["a_arm"] if c["kind"] == "arms" else c["a_method"]
        b = c["b_arm"] if c["kind"] == "arms" else c["b_method"]
        within = c["a_method"] if c["kind"] == "arms" else c["a_arm"]
        scale, suffix, digits = (100, "%", 1) if c["metric"] == "forget" else (1, "", 3)
        out.append({"what": f"{c['model']} {within}: {a} vs {b}", "metric": c["metric"],
                    "a": number(c["a_value"] * scale, digits), "b": number(c["b_value"] * scale, digits),
                    "diff": _ci(c["diff"], c["ci_low"], c["ci_high"], digits, scale, suffix),
                    "d": number(c["effect_size"], 2), "p": _p(c["p_value"]), "df": _df(c.get("df")),
                    "p_mcnemar": _p(c["p_mcnemar"]),
                    "p_holm": _p(c["p_holm"]), "q_bh": _p(c["q_bh"]), "significant": bool(c["significant"]),
                    "family": c.get("family", "primary"),
                    "better": {"a": a, "b": b}.get(c["better"], "–") if c["significant"] else "–",
                    "matched": c["matched"]})
    return out


def baseline_rows(runs: pd.DataFrame, cmp: pd.DataFrame) -> list[dict]:
    """Per curated arm: does it beat each baseline on learn, significantly after its family's correction?"""
    v = stats.baseline_verdicts(runs, cmp)
    return [{"what": f"{r.model} {r.method}: {r.arm}", "baseline": f"{r.baseline} ({r.baseline_arm})",
             "diff": _ci(r.diff, r.ci_low, r.ci_high), "p_holm": _p(r.p_adjusted), "family": r.family,
             "verdict": "beats it" if r.beats else "does not beat it", "beats": r.beats} for r in v.itertuples()]


def exchange_rows(t: stats.Tables) -> list[dict]:
    """The exchange rate per curated arm and method, in words and numbers (stat_exchange)."""
    if t.exchange is None or t.exchange.empty:
        return []
    out = []
    for r in t.exchange.itertuples():
        cost = "not recorded" if pd.isna(r.arm_cost_usd) or pd.isna(r.bulk_cost_usd) else \
            f"${r.arm_cost_usd:.3g} per run (curation included) vs ${r.bulk_cost_usd:.3g} for bulk at that size"
        out.append({"what": f"{r.model} {r.method}", "statement": r.statement,
                    "fit": f"{r.metric} = {r.intercept:.3f} + {r.slope:.3f} ln(examples) over "
                           f"{', '.join(f'{n:,}' for n in json.loads(r.bulk_sizes))}", "cost": cost})
    return out


def analysis_of(con, matrix: str):
    """The matrix's `analysis:` section as recorded by its last run (spec.Analysis's defaults if none was)."""
    from harness.spec import Analysis

    d = store.matrix_analysis(con, matrix) or {}
    return Analysis(**{f.name: d[f.name] for f in dataclasses.fields(Analysis) if f.name in d})


# ---------------------------------------------------------------------------------------------------------------


def build(db: Path, matrix: str | None, output: Path | None, opts: stats.Options = stats.Options(),
          analysis=None) -> Path:
    """Compute the statistics of a matrix, store them (stat_* tables) and write its report; returns the path.
    `analysis` (spec.Analysis) overrides the primary family the matrix's last run recorded."""
    import jinja2

    from harness.spec import matched_description

    with store.reader(db) as con:
        name = resolve_matrix(con, matrix, db)
        analysis = analysis or analysis_of(con, name)
        s = stats.load(con, name)
        if s.runs.empty:
            raise ReportError(f"{db}: matrix {name!r} has no finished runs")
        cards = data_cards(con, s.runs)
        losses = loss_curves(con, s.runs)
        browser = sample_browser(con, s.runs)
        audit = contamination(con, name)
    tables = stats.analyse(s, opts, analysis)
    with store.writer(db) as con:
        stats.write(con, name, tables, opts)

    cost = cost_axis(s.runs)
    spec = matrix_of(s)
    runs = s.runs.sort_values(["kind", "model", "method", "arm", "seed"], na_position="first")
    run_rows = [[r.run_id, r.model, r.method, r.arm or "–", "–" if pd.isna(r.seed) else int(r.seed),
                 _count(r.steps), _count(r.examples), "–" if pd.isna(r.epochs) else f"{r.epochs:.2f}",
                 _count(r.train_tokens), number(r.train_seconds, 1)] for r in runs.itertuples()]
    cols, rows = headline(s, tables, cost[0])
    charts_ = charts.charts(s, tables, losses, cost)
    agg = {"learn", "forget"}
    context = {
        "matrix": name, "db": str(db.resolve()), "version": __version__,
        "generated": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "opts": opts, "n_runs": int((s.runs["kind"] == "sft").sum()), "superseded": s.superseded,
        "tasks": [{"name": t.name, "group": t.group, "metric": t.metric, "n": len(t.doc_ids),
                   "direction": "higher is better" if t.higher_is_better else "lower is better"}
                  for t in s.tasks.values()],
        "matched": matched_description(spec) if spec else [], "run_cols": ["run", "model", "method", "arm", "seed",
                                                                          "steps", "examples", "epochs",
                                                                          "train tokens", "train s"],
        "run_rows": run_rows, "head_cols": cols, "head_rows": rows, "cost_sentence": cost[2],
        "cost_column": cost[0], "cards": cards, "browser": browser, "audit": audit,
        "cmp_main": comparison_rows(tables.comparisons, agg),
        "baselines": baseline_rows(s.runs, tables.comparisons),
        "cmp_tasks": comparison_rows(tables.comparisons[~tables.comparisons["metric"].isin(agg)], None),
        "n_cmp": len(tables.comparisons), "family": tables.family, "exchange": exchange_rows(tables),
        "n_primary": int((tables.comparisons["family"] == "primary").sum()), "charts": charts_,
        "vega_js": vega_bundle() if charts_ else "",
    }
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    html = env.get_template(TEMPLATE.name).render(**context)
    out = output or Path("reports") / f"{name}.html"
    with atomic_file(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out
