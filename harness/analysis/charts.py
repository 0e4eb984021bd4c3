"""The report's charts: one function per chart, each a Vega-Lite spec (built with altair) or None when it has no data.

A chart's rows travel as named datasets attached after altair's schema validation, which costs seconds on thousands
of rows. The template places each chart in its own section with one macro, chart(name).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.analysis import stats

LEARN_TITLE = "learn score (mean primary metric over learn tasks)"


def records(df: pd.DataFrame) -> list[dict]:
    """JSON-safe rows for a chart (NaN is not JSON: it becomes null)."""
    return json.loads(df.to_json(orient="records"))


def pareto(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask of the points no other point beats on both cost (lower) and score (higher)."""
    order = np.lexsort((-y, x))  # cheapest first; at equal cost the best first
    ys = y[order]
    cheaper_best = np.concatenate([[-np.inf], np.maximum.accumulate(ys)[:-1]])
    front = np.zeros(len(x), bool)
    front[order] = ys > cheaper_best
    return front


def arm_wide(arms: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One row per (model, method, arm): value, ci_low, ci_high of each metric as metric, metric_lo, metric_hi."""
    keys = ["model", "method", "method_kind", "arm", "role", "n_seeds", "seeds"]
    sub = arms[arms["metric"].isin(metrics)].fillna({"arm": "", "role": ""})
    wide = sub.pivot_table(index=keys, columns="metric", values=["value", "ci_low", "ci_high"], aggfunc="first")
    wide.columns = [m if v == "value" else f"{m}_{'lo' if v == 'ci_low' else 'hi'}" for v, m in wide.columns]
    return wide.reset_index()


@dataclass
class Frames:
    """What the charts draw: trained runs with their metrics, the base's learn score, arm means with intervals."""
    sft: pd.DataFrame
    base_learn: pd.DataFrame
    arms_sft: pd.DataFrame
    have: list[str]
    losses: pd.DataFrame
    comparisons: pd.DataFrame
    cost: tuple[str, str, str]  # (column, axis title, sentence): see report.cost_axis
    exchange: pd.DataFrame | None = None  # stats.Tables.exchange
    used: dict[str, list] = field(default_factory=dict)

    def data(self, name: str, rows):
        """Named data, attached by spec() after altair's validation."""
        import altair as alt

        self.used[name] = records(rows) if isinstance(rows, pd.DataFrame) else rows
        return alt.Data(name=name)

    def spec(self, chart) -> dict:
        d = chart.to_dict()
        d["datasets"] = dict(self.used)
        self.used.clear()
        return d


def frames(s: stats.Scores, t: stats.Tables, losses: pd.DataFrame, cost: tuple[str, str, str]) -> Frames:
    runs = s.runs
    rv = t.runs.pivot_table(index="run_id", columns="metric", values="value", aggfunc="first")
    have = [m for m in ("learn", "learn_gain", "forget") if m in rv.columns]
    pts = runs.merge(rv[have], left_on="run_id", right_index=True, how="left")
    wide = arm_wide(t.arms, have)
    arms_sft = wide[wide["method_kind"] != "base"].copy()
    per = runs.groupby(["model", "method", runs["arm"].fillna("")]).agg(examples=("examples", "mean"),
                                                                         cost=(cost[0], "mean")).reset_index()
    return Frames(sft=pts[pts["kind"] == "sft"].copy(),
                  base_learn=pts.loc[pts["kind"] == "base", ["model"] + (["learn"] if "learn" in have else [])],
                  arms_sft=arms_sft.merge(per, on=["model", "method", "arm"], how="left"), have=have, losses=losses,
                  comparisons=t.comparisons, cost=cost, exchange=t.exchange)


# a role keeps its colour whichever roles a matrix has: curated, the three baselines, bulk
ROLE_COLOURS = dict(zip(stats.ROLE_ORDER, ["#1b9e77", "#7570b3", "#e7298a", "#e6ab02", "#d95f02"]))


def _role_scale(roles):
    """The arm colours of the roles the matrix has (the legend lists no role it lacks)."""
    import altair as alt

    have = [r for r in stats.ROLE_ORDER if r in set(roles)]
    return alt.Scale(domain=have, range=[ROLE_COLOURS[r] for r in have])


def _log_axis(title: str):
    """A log axis whose labels keep apart: Vega labels up to 9 ticks a decade ("300400" on a narrow panel) and its
    greedy overlap removal drops only labels that touch; 8 px between labels leaves ~3 a decade on a 320 px panel."""
    import altair as alt

    return alt.Axis(title=title, labelOverlap="greedy", labelSeparation=8)


def quantity(f: Frames) -> dict:
    """Quality vs quantity: one panel per method; runs as dots, arm means with intervals, the base as a rule."""
    import altair as alt

    role_scale, panels = _role_scale(f.sft["role"].dropna()), []
    for method in dict.fromkeys(f.sft["method"]):
        r = f.sft[f.sft["method"] == method]
        a = f.arms_sft[f.arms_sft["method"] == method]
        x = alt.X("examples:Q", scale=alt.Scale(type="log"), axis=_log_axis("training examples in the arm (log scale)"))
        dots = alt.Chart(f.data(f"runs_{method}", r[["run_id", "arm", "role", "seed", "examples", "learn"]])) \
            .mark_point(opacity=0.5, size=30).encode(
                x=x, y=alt.Y("learn:Q", title=LEARN_TITLE), color=alt.Color("role:N", scale=role_scale, title="arm"),
                tooltip=["arm:N", "seed:Q", "examples:Q", alt.Tooltip("learn:Q", format=".3f"), "run_id:N"])
        recs = a[["arm", "role", "examples", "learn", "learn_lo", "learn_hi"]]
        mean = alt.Chart(f.data(f"arms_{method}", recs)).encode(
            x=x, color=alt.Color("role:N", scale=role_scale, title="arm"))
        layers = [dots, mean.mark_line(strokeDash=[4, 3]).encode(y="learn:Q", detail="role:N"),
                  mean.mark_errorbar(ticks=True).encode(y=alt.Y("learn_lo:Q", title=LEARN_TITLE), y2="learn_hi:Q"),
                  mean.mark_point(filled=True, size=90).encode(
                      y="learn:Q", shape=alt.Shape("arm:N", title="arm name"),
                      tooltip=["arm:N", "role:N", "examples:Q", alt.Tooltip("learn:Q", format=".3f"),
                               alt.Tooltip("learn_lo:Q", format=".3f"), alt.Tooltip("learn_hi:Q", format=".3f")])]
        if len(f.base_learn):
            layers.append(alt.Chart(f.data("base", f.base_learn)).mark_rule(color="gray", strokeDash=[2, 2])
                          .encode(y="learn:Q", tooltip=["model:N", alt.Tooltip("learn:Q", format=".3f")]))
        panels.append(alt.layer(*layers).properties(title=f"{method}", width=320, height=260))
    return f.spec(alt.hconcat(*panels).resolve_scale(y="shared"))


def cost_vs_learn(f: Frames) -> dict | None:
    """Cost vs performance, with the Pareto front over (method, arm) means."""
    import altair as alt

    col, title, _ = f.cost
    a = f.arms_sft.dropna(subset=["cost"]).copy()
    if not len(a):
        return None
    a["pareto"] = pareto(a["cost"].to_numpy(float), a["learn"].to_numpy(float))
    a["config"] = a["method"] + " / " + a["arm"]
    x = alt.X("cost:Q", scale=alt.Scale(type="log", nice=False, padding=24), axis=_log_axis(title))
    enc = alt.Chart(f.data("arms", a[["config", "method", "arm", "role", "cost", "learn", "learn_lo", "learn_hi",
                                      "pareto"]]))
    front = a[a["pareto"]].sort_values("cost")
    runs = f.sft[["run_id", "method", "arm", col, "learn"]].rename(columns={col: "cost"})
    layers = [
        alt.Chart(f.data("runs", runs)).mark_point(opacity=0.35, size=20).encode(
            x=x, y="learn:Q", color=alt.Color("method:N", title="method"), tooltip=["run_id:N", "arm:N"]),
        enc.mark_errorbar().encode(x=x, y=alt.Y("learn_lo:Q", title=LEARN_TITLE), y2="learn_hi:Q", color="method:N"),
        alt.Chart(f.data("front", front[["cost", "learn"]])).mark_line(
            color="black", strokeDash=[6, 3], interpolate="step-after").encode(x=x, y="learn:Q"),
        enc.mark_point(filled=True, size=100).encode(
            x=x, y="learn:Q", color="method:N", shape=alt.Shape("role:N", title="arm"),
            tooltip=["config:N", alt.Tooltip("cost:Q", format=",.4~g"), alt.Tooltip("learn:Q", format=".3f"),
                     "pareto:N"]),
        enc.transform_filter("datum.pareto").mark_point(size=320, color="black", strokeWidth=1.5).encode(
            x=x, y="learn:Q"),
    ]
    return f.spec(alt.layer(*layers).properties(
        width=560, height=320, title="black rings and the dashed step: the Pareto front (cheaper and better)"))


def learn_forget(f: Frames) -> dict | None:
    """Learn vs forget: one point per run."""
    import altair as alt

    if "forget" not in f.have or "learn_gain" not in f.have \
            or not f.sft[["learn_gain", "forget"]].notna().all(axis=1).any():
        return None
    d = f.sft[["run_id", "method", "method_kind", "arm", "role", "seed", "learn_gain", "forget"]].dropna(
        subset=["learn_gain", "forget"]).copy()
    d["forget_pct"] = d["forget"] * 100
    zero = alt.Chart(f.data("zero", [{"z": 0}]))
    return f.spec(alt.layer(
        zero.mark_rule(color="gray").encode(x="z:Q"), zero.mark_rule(color="gray").encode(y="z:Q"),
        alt.Chart(f.data("runs", d)).mark_point(filled=True, size=80, opacity=0.8).encode(
            x=alt.X("forget_pct:Q", title="forget: relative loss of the base's forget-task scores (%, "
                                          "right = forgot more)"),
            y=alt.Y("learn_gain:Q", title="learn gain over the base (mean primary metric, up = learned more)"),
            color=alt.Color("method_kind:N", title="method (full vs LoRA)"),
            shape=alt.Shape("arm:N", title="arm"),
            tooltip=["run_id:N", "method:N", "arm:N", "seed:Q", alt.Tooltip("learn_gain:Q", format=".3f"),
                     alt.Tooltip("forget_pct:Q", format=".2f")])).properties(width=560, height=340))


def loss(f: Frames) -> dict | None:
    """Training loss curves, one panel per method."""
    import altair as alt

    if not len(f.losses):
        return None
    return f.spec(alt.Chart(f.data("loss", f.losses)).mark_line(strokeWidth=1.2, opacity=0.85).encode(
        x=alt.X("step:Q", title="optimizer step"),
        y=alt.Y("loss:Q", title="training loss (cross-entropy, nats per response token)"),
        color=alt.Color("arm:N", title="arm"), strokeDash=alt.StrokeDash("seed:N", title="seed"),
        detail="run_id:N", tooltip=["arm:N", "seed:N", "step:Q", alt.Tooltip("loss:Q", format=".3f")])
        .properties(width=320, height=240).facet(column=alt.Column("method:N", title="method")))


def forest(f: Frames) -> dict | None:
    """The paired comparisons of learn and forget as a forest plot."""
    import altair as alt

    c = f.comparisons
    cmp = c[c["metric"].isin(["learn", "forget"])].dropna(subset=["diff", "se"]).copy()
    if not len(cmp):
        return None
    cmp["pair"] = np.where(cmp["kind"] == "arms", cmp["a_method"] + ": " + cmp["a_arm"] + " − " + cmp["b_arm"],
                           cmp["a_arm"] + ": " + cmp["a_method"] + " − " + cmp["b_method"])
    primary = cmp["family"].eq("primary") if "family" in cmp else pd.Series(True, index=cmp.index)
    cmp["result"] = np.where(cmp["significant"], np.where(primary, "significant (primary, Holm)",
                                                          "significant (exploratory, BH)"), "not significant")
    cmp["p_adjusted"] = np.where(primary, cmp["p_holm"], cmp["q_bh"])
    base = alt.Chart(f.data("cmp", cmp[["pair", "metric", "diff", "ci_low", "ci_high", "p_adjusted", "result"]]))
    y = alt.Y("pair:N", title=None, sort=None)
    return f.spec(alt.layer(
        base.mark_rule(color="gray").encode(x=alt.datum(0)),
        base.mark_errorbar(ticks=True).encode(y=y, x=alt.X("ci_low:Q", title="difference a − b with its "
                                                           "interval (learn: score; forget: relative loss)"),
                                              x2="ci_high:Q", color=alt.Color("result:N", title=None)),
        base.mark_point(filled=True, size=60).encode(
            y=y, x="diff:Q", color="result:N",
            tooltip=["pair:N", "metric:N", alt.Tooltip("diff:Q", format=".4f"),
                     alt.Tooltip("p_adjusted:Q", format=".4g")])).properties(width=300)
        .facet(column=alt.Column("metric:N", title="metric")).resolve_scale(x="independent"))


def exchange(f: Frames) -> dict | None:
    """The exchange rate: per method, the bulk arms' scores against ln(examples) with the fitted line, and each
    curated arm drawn at its score and the bulk size it is worth (bar: the interval of that size)."""
    import altair as alt

    ex = f.exchange
    if ex is None or ex.empty:
        return None
    panels = []
    for method in dict.fromkeys(ex["method"]):
        e = ex[ex["method"] == method]
        metric = e["metric"].iloc[0]
        bulk = json.loads(e["bulk_arms"].iloc[0])
        pts = f.arms_sft[(f.arms_sft["method"] == method) & f.arms_sft["arm"].isin(bulk)]
        if metric not in pts:
            return None
        pts = pts[["arm", "examples", metric, f"{metric}_lo", f"{metric}_hi"]].set_axis(
            ["arm", "examples", "value", "lo", "hi"], axis=1)
        sizes = json.loads(e["bulk_sizes"].iloc[0])
        lo_x = min([*sizes, *e["equiv_examples"].clip(upper=4 * max(sizes)).tolist()])
        hi_x = max([*sizes, *e["equiv_examples"].clip(upper=4 * max(sizes)).tolist()])
        line = pd.DataFrame({"examples": [lo_x, hi_x]})
        line["value"] = e["intercept"].iloc[0] + e["slope"].iloc[0] * np.log(line["examples"])
        # an interval end beyond 4x the largest size is drawn at that edge (the table says "> N")
        cur = e[["arm", "value", "equiv_examples", "ci_low", "ci_high", "statement"]].copy()
        for c in ("equiv_examples", "ci_low", "ci_high"):
            cur[c] = cur[c].clip(lower=min(sizes) / 4, upper=4 * max(sizes))
        xt, yt = "bulk training examples (log scale)", f"{metric} (arm mean over seeds)"
        x = alt.X("examples:Q", scale=alt.Scale(type="log"), title=xt)
        y = alt.Y("value:Q", title=yt, scale=alt.Scale(zero=False))
        dots = alt.Chart(f.data(f"ex_bulk_{method}", pts))
        cur_c = alt.Chart(f.data(f"ex_cur_{method}", cur))
        panels.append(alt.layer(
            alt.Chart(f.data(f"ex_fit_{method}", line)).mark_line(color="#d95f02").encode(x=x, y=y),
            dots.mark_errorbar(ticks=True, color="#d95f02").encode(x=x, y=alt.Y("lo:Q", title=yt), y2="hi:Q"),
            dots.mark_point(filled=True, size=70, color="#d95f02").encode(
                x=x, y=y, tooltip=["arm:N", "examples:Q", alt.Tooltip("value:Q", format=".3f")]),
            cur_c.mark_errorbar(ticks=True).encode(x=alt.X("ci_low:Q", title=xt), x2="ci_high:Q", y="value:Q",
                                                    color=alt.Color("arm:N", title="curated arm")),
            cur_c.mark_point(filled=True, size=110, shape="diamond").encode(
                x=alt.X("equiv_examples:Q", title=xt), y="value:Q", color="arm:N",
                tooltip=["statement:N"]))
            .properties(title=f"{method}", width=320, height=260))
    return f.spec(alt.hconcat(*panels))


CHARTS = {"quantity": quantity, "exchange": exchange, "cost": cost_vs_learn, "learn_forget": learn_forget, "loss": loss,
          "forest": forest}


def charts(s: stats.Scores, t: stats.Tables, losses: pd.DataFrame, cost: tuple[str, str, str]) -> dict[str, dict]:
    """name -> Vega-Lite spec of every chart that has data (none without a trained run with a learn score)."""
    f = frames(s, t, losses, cost)
    if f.sft.empty or "learn" not in f.have:
        return {}
    specs = {name: make(f) for name, make in CHARTS.items()}
    return {name: spec for name, spec in specs.items() if spec is not None}
