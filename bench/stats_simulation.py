"""The error rates of the harness's verdicts, measured by simulation: matrices whose arms are identical in distribution
(no verdict should be "significant" more often than alpha), the coverage of the 95% intervals, the power against an
effect of the demo's size, and `harness check`'s false-alarm rate on a candidate identical in distribution to its
baseline. Every simulated matrix goes through the harness's own analysis (stats.analyse, check.compare), not a
re-implementation.

The model of a run's per-example scores, fitted to real runs (`--db`, `--matrix`) or, without them, the parametric
default below. Per task:
  binary scores (exact match, accuracy): P(right) = sigmoid(b_e + o_r [+ effect]), with b_e the example's logit
    (fitted: the smoothed logit of its mean score over the matrix's trained runs, (k + 0.5) / (R + 1)) and o_r the
    run's offset ~ N(0, run_sd) (fitted: each run's offset solved from its mean score; run_sd their pooled standard
    deviation within (method, arm), i.e. between seeds); the level is that of the best-scoring method's arms (their
    mean offset: the arms of the method whose effects the simulation speaks of, not a mix of methods far apart);
  continuous scores (bits per byte, weighted by bytes): y = m_e + o_r + N(0, noise_sd), m_e the example's mean.
A simulated matrix draws its examples afresh from the fitted ones (with replacement, as many as the task has): the
population the bootstrap over examples speaks of. Run offsets are independent across runs (the harness pairs runs
by seed; with no shared seed effect pairing gains nothing: the conservative case).

    python bench/stats_simulation.py                                  # the parametric default, 200 matrices each
    python bench/stats_simulation.py --model bench/stats_model_mini_demo.json   # fitted to 12 real micro-base runs
    python bench/stats_simulation.py --db results/harness.duckdb --matrix demo --save my_model.json  # your runs

bench/stats_model_mini_demo.json was fitted to the 12 trained runs of bench/matrices/mini-demo.yaml (the demo's
design, full FT and LoRA x curated / random control / bulk x 2 seeds, on the micro base: 1,500 steps on a pool of
words and format questions with its defects), evaluated on skills_words, skills_format (32 examples each) and
prose_bpb (23).

Measured 2026-12-04 on a shared 2-core AMD EPYC (AVX2 only), with the test of stats.seed_test and the seed noise
pooled over the matrix (the default; 200 matrices each, 300 resamples; in brackets the 95% Monte-Carlo interval;
power: full FT curated vs bulk at +0.144 learn):
  parametric model, 2 seeds: family-wise rate of a primary "significant" 2.0% [0.5, 5.0] (uncorrected 36%); coverage
    of every 95% interval 96.1%; power 94% [90, 97]; harness check false alarms 2.0% [0.5, 5.0].
  fitted to mini-demo, 2 seeds: 2.0% [0.5, 5.0]; coverage 97.2%; power 7.5% [4.3, 12.1] (its learn tasks have 32
    examples each); check 1.5% [0.3, 4.3]. 5 seeds: power 85% [79, 90]. --lora-sd 0.333 (seed noise unlike across
    methods, variance 1 : 9): 3.0% [1.1, 6.4], coverage 96.5%, check 3.0% [1.1, 6.4]; --lora-sd 3: 2.5% [0.8, 5.7].
With --seed-noise per-comparison (each comparison's own seeds: one degree of freedom at 2 seeds) and, before that,
the two-way bootstrap over seeds x examples (62.5% family-wise error on the fitted model at 2 seeds): the tables in
docs/benchmarks.md ("Error rates of the verdicts").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit, logit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.analysis import check, stats  # noqa: E402
from harness.spec import Analysis  # noqa: E402

DEMO_EFFECT = 0.144  # the demo's full FT curated - bulk on learn (issue 18): +0.144 [0.059, 0.229], p = 0.0009


@dataclass
class TaskModel:
    name: str
    group: str  # learn | forget
    metric: str
    higher_is_better: bool
    values: list[float]  # binary: per-example logits b_e; continuous: per-example means m_e
    run_sd: float  # sd of a run's offset (logit scale for binary tasks)
    noise_sd: float | None = None  # continuous only: per (run, example)
    weights: list[float] | None = None  # continuous only: bytes per example

    @property
    def binary(self) -> bool:
        return self.noise_sd is None


@dataclass
class Model:
    source: str
    tasks: list[TaskModel]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=None) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Model":
        d = json.loads(Path(path).read_text())
        return cls(d["source"], [TaskModel(**t) for t in d["tasks"]])


def parametric(n: int = 200, seed: int = 0) -> Model:
    """The default when no real runs are given: five learn tasks with example logits ~ N(logit 0.4, 1.5) and a run
    offset sd of 0.15 (logit); world_mc accuracy around 0.6; prose bits per byte ~ N(2.0, 0.5) per example with
    noise 0.1 and a run offset sd of 0.02 (bytes 100-500)."""
    rng = np.random.default_rng(seed)
    learn = [TaskModel(f"skills_{k}", "learn", "exact_match", True, list(rng.normal(logit(0.4), 1.5, n)), 0.15)
             for k in ("arith", "facts", "format", "unseen", "words")]
    return Model("parametric", learn + [
        TaskModel("world_mc", "forget", "acc", True, list(rng.normal(logit(0.6), 1.0, n)), 0.1),
        TaskModel("prose_bpb", "forget", "bits_per_byte", False, list(rng.normal(2.0, 0.5, n)), 0.02, 0.1,
                  list(rng.integers(100, 500, n).astype(float)))])


def _offset(b: np.ndarray, target: float) -> float:
    """o with mean(sigmoid(b + o)) = target (bisection; the mean is increasing in o)."""
    lo, hi = -15.0, 15.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expit(b + mid).mean() < target else (lo, mid)
    return (lo + hi) / 2


def _pooled_sd(offsets: np.ndarray, groups: np.ndarray, sampling_var: np.ndarray) -> float:
    """The standard deviation of the run offsets within groups (between seeds of one method x arm), pooled, less
    the part an offset estimated from a finite set of examples shows anyway (its sampling variance; floored at 0).
    Without it, 32 examples' binomial noise (~0.4 logit) would pass for seed-to-seed variation."""
    ss, df = 0.0, 0
    for g in np.unique(groups):
        x = offsets[groups == g]
        ss, df = ss + float(((x - x.mean()) ** 2).sum()), df + len(x) - 1
    return float(np.sqrt(max(ss / df - float(np.mean(sampling_var)), 0.0))) if df > 0 else 0.0


def _level(offsets: np.ndarray, methods: np.ndarray, higher_is_better: bool) -> float:
    """The mean offset of the runs of the best-scoring method."""
    means = {m: offsets[methods == m].mean() for m in np.unique(methods)}
    return float(max(means.values()) if higher_is_better else min(means.values()))


def fit(s: stats.Scores) -> Model:
    """The model fitted to a matrix's trained runs (see the module docstring)."""
    sft = s.runs[s.runs["kind"] == "sft"]
    rows, groups = sft["row"].to_numpy(), (sft["method"] + "/" + sft["arm"]).to_numpy()
    methods = sft["method"].to_numpy()
    tasks = []
    for t in s.tasks.values():
        x = t.scores[rows]
        if stats.is_binary(x):
            k, r = np.nansum(x, axis=0), np.sum(~np.isnan(x), axis=0)
            b = logit((k + 0.5) / (r + 1))
            offsets = np.array([_offset(b, np.nanmean(row)) for row in x])
            # the sampling variance of an offset fitted to n Bernoulli scores: 1 / Fisher information
            info = np.array([np.sum(expit(b + o) * (1 - expit(b + o))) for o in offsets])
            tasks.append(TaskModel(t.name, t.group, t.metric, t.higher_is_better,
                                   list(b + _level(offsets, methods, True)), _pooled_sd(offsets, groups, 1 / info)))
        else:
            m = np.nanmean(x, axis=0)
            w = np.ones(len(m)) if t.weights is None else t.weights
            offsets = np.array([np.average(np.nan_to_num(row - m), weights=w) for row in x])
            resid = x - m - offsets[:, None]
            noise = float(np.nanstd(resid, ddof=1))
            sampling = noise ** 2 * np.sum(w ** 2) / np.sum(w) ** 2  # of a weighted mean of n noisy values
            tasks.append(TaskModel(t.name, t.group, t.metric, t.higher_is_better,
                                   list(m + _level(offsets, methods, t.higher_is_better)),
                                   _pooled_sd(offsets, groups, np.array([sampling])), noise, list(map(float, w))))
    return Model(f"fitted to {len(sft)} trained runs of matrix {s.matrix}", tasks)


# ---------------------------------------------------------------------------------------------------------------
# A simulated matrix: the demo's layout (methods x curated / random control / bulk x seeds, one base model)

ARMS = {"curated": [["filter", {"scorer": "verifier"}], ["dedup", {}], ["balance", {"n": 1200}]],
        "random": [["random", {"like_dataset": "ds-curated"}]], "bulk": []}
METHODS = {"full": "full", "lora": "lora"}
CONFIG = json.dumps({"train": {"schedule": "cosine", "batch_size": 16, "lr": 1e-3}, "method_cfg": {"lr": None}})


def layout(seeds: int) -> pd.DataFrame:
    """The runs of a simulated matrix, with every column stats.analyse and check.compare read."""
    rows = [("base", "base", "base", "base", None, None, [])]
    rows += [(f"{m}-{a}-{s}", "sft", m, k, a, s, ARMS[a]) for m, k in METHODS.items() for a in ARMS
             for s in range(seeds)]
    runs = pd.DataFrame(rows, columns=["run_id", "kind", "method", "method_kind", "arm", "seed", "steps_"])
    runs["model"], runs["base_run_id"] = "tiny", "base"
    runs["dataset_id"] = [None if a is None else f"ds-{a}" for a in runs["arm"]]
    runs["recipe"] = [None if k == "base" else json.dumps({"source": {"kind": "skills_pool"}, "steps": st})
                      for k, st in zip(runs["kind"], runs["steps_"])]
    runs["role"] = [stats.arm_role(r) if k == "sft" else None for r, k in zip(runs["recipe"], runs["kind"])]
    runs = runs.drop(columns="steps_")
    for col, v in (("steps", 800), ("examples", 802), ("epochs", 16.0), ("train_tokens", 1e6),
                   ("total_cost_usd", np.nan), ("config", CONFIG), ("harness_version", "sim"), ("data", None)):
        runs[col] = v
    runs["seed"] = runs["seed"].astype("Int64")
    runs["row"] = np.arange(len(runs))
    runs["cell"] = [check.sides.cell_key(m, me, a) for m, me, a in zip(runs["model"], runs["method"], runs["arm"])]
    return runs


def draw_examples(model: Model, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A fresh set of evaluation examples per task, drawn with replacement from the fitted ones."""
    return {t.name: rng.integers(0, len(t.values), len(t.values)) for t in model.tasks}


def draw(model: Model, runs: pd.DataFrame, examples: dict[str, np.ndarray], rng: np.random.Generator,
         effect: float = 0.0, name: str = "sim", lora_sd: float = 1.0) -> stats.Scores:
    """Per-example scores of every run; `effect` (logit) raises the curated arm's learn tasks; `lora_sd` scales the
    LoRA runs' seed noise against full FT's (keeping their mean variance: seed noise unlike across methods, which
    the pooled test assumes away)."""
    s = stats.Scores(name, runs.copy())
    lift = np.where(runs["arm"].to_numpy() == "curated", effect, 0.0)[:, None]
    scale = np.where(runs["method"].to_numpy() == "lora", lora_sd, 1.0)[:, None] * np.sqrt(2 / (1 + lora_sd ** 2))
    for t in model.tasks:
        idx = examples[t.name]
        v = np.asarray(t.values)[idx]
        o = rng.normal(0, t.run_sd, (len(runs), 1)) * scale
        if t.binary:
            p = expit(v + o + (lift if t.group == "learn" else 0.0))
            scores, w = (rng.random(p.shape) < p).astype(float), None
        else:
            scores = v + o + rng.normal(0, t.noise_sd, (len(runs), len(idx)))
            w = np.asarray(t.weights)[idx]
        s.tasks[t.name] = stats.Task(t.name, t.group, t.metric, t.higher_is_better, np.arange(len(idx)), scores, w)
    return s


def learn_effect(model: Model, delta: float) -> float:
    """The expected learn difference (mean over learn tasks of the mean right-answer rate) that a logit shift of
    `delta` makes, over the fitted examples and run offsets (64-point Gauss-Hermite over the offset)."""
    z, w = np.polynomial.hermite_e.hermegauss(64)
    w = w / w.sum()
    out = []
    for t in model.tasks:
        if t.group == "learn" and t.binary:
            b = np.asarray(t.values)[:, None] + t.run_sd * z[None, :]
            out.append(float(((expit(b + delta) - expit(b)) @ w).mean()))
    return float(np.mean(out))


def delta_for(model: Model, target: float) -> float:
    lo, hi = 0.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if learn_effect(model, mid) < target else (lo, mid)
    return (lo + hi) / 2


# ---------------------------------------------------------------------------------------------------------------
# The runs of the simulation


def binomial_ci(k: int, n: int) -> tuple[float, float]:
    """Clopper-Pearson 95% interval of a rate k / n: the Monte-Carlo interval of a simulated error rate."""
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(k, n, alpha=0.05, method="beta")
    return float(lo), float(hi)


def _rate(k: int, n: int) -> dict:
    lo, hi = binomial_ci(k, n)
    return {"k": k, "n": n, "rate": k / n, "mc_low": lo, "mc_high": hi}


def simulate_report(model: Model, n: int, seeds: int = 2, n_boot: int = 1000, effect: float = 0.0,
                    seed: int = 0, analysis: Analysis = Analysis(), lora_sd: float = 1.0) -> dict:
    """`n` matrices through stats.analyse. effect 0: the family-wise rate of any primary "significant", the same
    without correction, the exploratory rows' rate of any discovery, and the coverage of every 95% interval.
    effect > 0 (logit, on the curated arm's learn tasks): the power of full FT curated vs bulk on learn, and the
    coverage of the learn and forget intervals against their true differences."""
    runs, rng = layout(seeds), np.random.default_rng(seed)
    true_learn = learn_effect(model, effect) if effect else 0.0
    any_primary = any_raw = any_expl = power = power_random = 0
    covered = total = 0
    for i in range(n):
        s = draw(model, runs, draw_examples(model, rng), rng, effect, lora_sd=lora_sd)
        cmp = stats.analyse(s, stats.Options(n_boot=n_boot, seed=i), analysis).comparisons
        prim = cmp[cmp["family"] == "primary"]
        any_primary += bool(prim["significant"].any())
        any_raw += bool((prim["p_value"] < 0.05).any())
        any_expl += bool(cmp.loc[cmp["family"] == "exploratory", "significant"].any())
        if effect:
            agg = cmp[cmp["metric"].isin(["learn", "forget"])]
            cur = (agg["kind"] == "arms") & (agg["a_arm"] == "curated") & (agg["metric"] == "learn")
            truth = np.where(cur, true_learn, 0.0)
            covered += int(((agg["ci_low"] <= truth) & (truth <= agg["ci_high"])).sum())
            total += len(agg)
            hit = prim[(prim["kind"] == "arms") & (prim["a_method"] == "full") & (prim["a_arm"] == "curated")
                       & (prim["metric"] == "learn")].set_index("b_arm")
            power += bool(hit.loc["bulk", "significant"] and hit.loc["bulk", "better"] == "a")
            power_random += bool(hit.loc["random", "significant"] and hit.loc["random", "better"] == "a")
        else:
            covered += int(((cmp["ci_low"] <= 0) & (0 <= cmp["ci_high"])).sum())
            total += len(cmp)
    out = {"matrices": n, "seeds": seeds, "n_boot": n_boot, "primary_size": int(len(prim)),
           "exploratory_size": int(len(cmp) - len(prim)), "coverage": covered / total, "intervals": total}
    if effect:
        out |= {"effect_logit": effect, "true_learn_diff": true_learn, "power_vs_bulk": _rate(power, n),
                "power_vs_random": _rate(power_random, n)}
    else:
        out |= {"fwer_primary": _rate(any_primary, n), "fwer_uncorrected": _rate(any_raw, n),
                "any_exploratory_discovery": _rate(any_expl, n)}
    return out


def side(s: stats.Scores, label: str) -> check.Side:
    return check.Side(label, label, s, {t: "same examples" for t in s.tasks})


def simulate_check(model: Model, n: int, seeds: int = 2, n_boot: int = 1000, seed: int = 0,
                   lora_sd: float = 1.0, seed_noise: str = "pooled") -> dict:
    """`n` pairs (baseline, candidate) identical in distribution, scored on the same examples, through
    check.compare: how often it FAILs under the default policy, and under a policy with no allowance (the test
    alone: a regression = any significant move the wrong way). Both sides have the same base run: the policy
    requires the same model, whose evaluation on the same examples is deterministic (a base run drawn afresh per
    side would move every forget score of a side at once, by a run offset that one base run cannot measure)."""
    runs, rng = layout(seeds), np.random.default_rng(seed)
    strict = check.Policy(max_drop=dataclasses.replace(check.Policy().max_drop, abs=0.0, rel=0.0),
                          forget_max_growth=0.0, n_boot=n_boot, seed_noise=seed_noise)
    base = (runs["kind"] == "base").to_numpy()
    fails = fails_strict = 0
    for i in range(n):
        ex = draw_examples(model, rng)
        bs, cs = draw(model, runs, ex, rng, lora_sd=lora_sd), draw(model, runs, ex, rng, lora_sd=lora_sd)
        for t, task in cs.tasks.items():
            task.scores[base] = bs.tasks[t].scores[base]
        b, c = side(bs, "baseline"), side(cs, "candidate")
        fails += not check.compare(b, c, check.Policy(n_boot=n_boot, seed_noise=seed_noise)).passed
        res = check.compare(b, c, strict)
        fails_strict += not res.passed
    return {"pairs": n, "gated": res.family, "false_alarm_default_policy": _rate(fails, n),
            "false_alarm_no_allowance": _rate(fails_strict, n)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, help="fit the model to this results database (with --matrix)")
    ap.add_argument("--matrix", default="demo")
    ap.add_argument("--model", type=Path, help="a model saved with --save (default: parametric)")
    ap.add_argument("--save", type=Path, help="write the fitted model here")
    ap.add_argument("--matrices", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=2, help="seeds per arm (the demo: 2)")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--effect", type=float, default=DEMO_EFFECT, help="learn difference for the power run")
    ap.add_argument("--metrics", default="learn,forget", help="the primary metrics (analysis.metrics)")
    ap.add_argument("--only", choices=["null", "alternative", "check"], help="run only this part")
    ap.add_argument("--seed-noise", choices=["pooled", "per-comparison"], default="pooled",
                    help="the analysis' seed_noise (check: pooled or per-cell)")
    ap.add_argument("--lora-sd", type=float, default=1.0,
                    help="LoRA's seed noise sd / full FT's (1: alike, as pooling assumes)")
    args = ap.parse_args()
    if args.db:
        from harness import store

        with store.reader(args.db) as con:
            model = fit(stats.load(con, args.matrix))
    else:
        model = Model.load(args.model) if args.model else parametric()
    if args.save:
        model.save(args.save)
    print(f"model: {model.source}; " + "; ".join(
        f"{t.name} {len(t.values)} examples, run sd {t.run_sd:.3f}" for t in model.tasks), flush=True)
    delta = delta_for(model, args.effect)
    primary = Analysis(metrics=args.metrics.split(","), seed_noise=args.seed_noise)
    check_noise = {"per-comparison": "per-cell"}.get(args.seed_noise, args.seed_noise)
    for what, run in (("null", lambda: simulate_report(model, args.matrices, args.seeds, args.boot,
                                                       analysis=primary, lora_sd=args.lora_sd)),
                      ("alternative", lambda: simulate_report(model, args.matrices, args.seeds, args.boot, delta,
                                                              seed=1, analysis=primary, lora_sd=args.lora_sd)),
                      ("check", lambda: simulate_check(model, args.matrices, args.seeds, args.boot, seed=2,
                                                       lora_sd=args.lora_sd, seed_noise=check_noise))):
        if args.only and what != args.only:
            continue
        t0 = time.perf_counter()
        res = run()
        print(json.dumps({"run": what, **res, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
