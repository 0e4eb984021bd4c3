"""harness/analysis/stats.py on simulated data where the truth is known."""

import numpy as np
import pytest
from scipy import stats as sps

from harness.analysis import stats


def arms(rng, n=300, seeds=3, effect=0.0, seed_sd=0.02):
    """Two arms scored 0/1 on the same n examples with the same seeds: example difficulty shared by both, a seed
    offset per (arm, seed), and a true accuracy difference of `effect` (a minus b)."""
    base = rng.uniform(0.2, 0.6, n)
    a = rng.random((seeds, n)) < base + effect + rng.normal(0, seed_sd, (seeds, 1))
    b = rng.random((seeds, n)) < base + rng.normal(0, seed_sd, (seeds, 1))
    return a.astype(float), b.astype(float)


def test_one_run_interval_agrees_with_scipy_bootstrap():
    """One seed: nothing measures seed noise, so the interval is the normal one with the bootstrap's standard error
    over examples (df infinite)."""
    x = (np.random.default_rng(0).random(400) < 0.3).astype(float)
    ours = stats.mean_interval(x, opts=stats.Options(n_boot=4000))
    ref = sps.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=0)
    assert ours["value"] == pytest.approx(x.mean()) and ours["df"] == np.inf
    assert ours["se"] == pytest.approx(ref.standard_error, rel=0.05)
    assert ours["ci_low"] == pytest.approx(ref.confidence_interval.low, abs=0.006)
    assert ours["ci_high"] == pytest.approx(ref.confidence_interval.high, abs=0.006)


def test_planted_effect_is_detected_and_covered():
    a, b = arms(np.random.default_rng(1), n=400, seeds=8, effect=0.15)
    res = stats.compare(a, b)
    assert res["p_value"] < 1e-3 and res["p_mcnemar"] < 1e-3 and res["df"] == pytest.approx(7)
    assert res["a_better"] is True and res["effect_size"] > 0.1
    assert res["ci_low"] < 0.15 < res["ci_high"]
    assert res["diff"] == pytest.approx((a - b).mean())


def test_no_effect_is_significant_at_most_at_the_stated_rate():
    """200 null comparisons (seed noise included): the share with p < 0.05 must not exceed alpha by more than its
    binomial noise (0.05 + 2 x sqrt(0.05 x 0.95 / 200) = 0.081). The two-way bootstrap is conservative here."""
    rng = np.random.default_rng(2)
    opts = stats.Options(n_boot=400)
    p = np.array([stats.compare(*arms(rng, n=200), opts=stats.Options(n_boot=400, seed=i))["p_value"]
                  for i in range(200)])
    assert np.mean(p < opts.alpha) <= 0.081
    assert np.mean(p < 0.5) > 0.25  # and not trivially conservative: p-values spread over [0, 1]
    # McNemar without seed noise is calibrated too
    pm = np.array([stats.compare(*arms(rng, n=200, seeds=1, seed_sd=0), opts=opts)["p_mcnemar"]
                   for _ in range(200)])
    assert np.mean(pm < 0.05) <= 0.081


def test_power_grows_with_the_effect():
    """5 seeds: 4 degrees of freedom for the seed part (with 3 seeds, t's 97.5% quantile is 4.3: power ~60% at 0.15)."""
    rng = np.random.default_rng(3)
    rate = [np.mean([stats.compare(*arms(rng, n=200, seeds=5, effect=e), opts=stats.Options(n_boot=300, seed=i))[
        "p_value"] < 0.05 for i in range(40)]) for e in (0.0, 0.05, 0.15)]
    assert rate[0] < rate[1] < rate[2] and rate[2] > 0.9


def continuous(rng, seeds, n=50, seed_sd=1.0, example_sd=0.0, noise_sd=0.01, effect=0.0):
    """Two arms scored on a continuous scale (bits per byte, say) on the same n examples with the same seeds: an
    offset per (arm, seed), a per-example difference between the arms that every seed shares (mean 0 over the
    population of examples), and noise per run and example."""
    a = effect + rng.normal(0, example_sd, n) + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, noise_sd, (seeds, n))
    b = rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, noise_sd, (seeds, n))
    return a, b


def test_seed_noise_alone_is_scipys_paired_t_test():
    """With no example noise the test is the paired t test over seeds: scipy's ttest_rel on the per-seed means
    (p-value, degrees of freedom, interval); with a little example noise, nearly so."""
    rng = np.random.default_rng(6)
    for seeds in (2, 3, 5):
        a = 0.5 + rng.normal(0, 1, (seeds, 1)) + np.zeros((seeds, 30))  # every example alike within a run
        b = rng.normal(0, 1, (seeds, 1)) + np.zeros((seeds, 30))
        res, ref = stats.compare(a, b), sps.ttest_rel(a.mean(axis=1), b.mean(axis=1))
        assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-9) and res["df"] == ref.df == seeds - 1
        ci = ref.confidence_interval(0.95)
        assert (res["ci_low"], res["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    a, b = continuous(rng, 4, noise_sd=1e-3)
    assert stats.compare(a, b)["p_value"] == pytest.approx(sps.ttest_rel(a.mean(axis=1), b.mean(axis=1)).pvalue,
                                                           rel=1e-3)


def test_unpaired_seeds_are_welchs_test():
    """Two groups of seeds that are not paired (harness check, when the sides ran other seeds), no example noise:
    scipy's Welch test (ttest_ind, equal_var=False)."""
    rng = np.random.default_rng(7)
    x, y = rng.normal(0.3, 1, 4), rng.normal(0, 2, 3)
    res = stats.seed_test(np.repeat(x[:, None], 101, axis=1), np.repeat(y[:, None], 101, axis=1))
    ref = sps.ttest_ind(x, y, equal_var=False)
    assert res["diff"] == pytest.approx(x.mean() - y.mean())
    assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-9) and res["df"] == pytest.approx(ref.df, rel=1e-9)


def test_pooled_seed_noise_is_statsmodels_two_way_anova():
    """Seed noise pooled over a matrix's groups (analysis seed_noise: pooled), no example noise: the residual mean
    square of statsmodels' OLS score ~ C(group) + C(seed) and its df_resid, and a paired comparison's p-value and
    interval are OLS's t test of the contrast group a - group b. Unbalanced (a group missing a seed) too."""
    import pandas as pd
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(12)
    d = pd.DataFrame([(g, s) for g in "abcdef" for s in range(3)], columns=["group", "seed"])
    d["y"] = rng.normal(0, 0.1, len(d)) + d["seed"] * 0.3 + np.where(d["group"] == "a", 0.2, 0.0)
    for data in (d, d.iloc[1:]):  # balanced; group a without seed 0
        fit = smf.ols("y ~ C(group) + C(seed)", data).fit()
        var, df = stats.pooled_seed_variance(data["y"].to_numpy(), data["group"].to_numpy(), data["seed"].to_numpy())
        assert var == pytest.approx(fit.mse_resid, rel=1e-9) and df == fit.df_resid
    var, df = stats.pooled_seed_variance(d["y"].to_numpy(), d["group"].to_numpy(), d["seed"].to_numpy())
    ref = smf.ols("y ~ C(group) + C(seed)", d).fit().t_test("C(group)[T.b] = 0")  # b - a (a: the reference level)
    ya, yb = (d.loc[d["group"] == g, "y"].to_numpy() for g in "ab")
    res = stats.seed_test(np.repeat((yb - ya)[:, None], 101, axis=1), pooled=(2 * var, df))
    assert res["p_value"] == pytest.approx(float(ref.pvalue), rel=1e-9) and res["df"] == df == 10
    assert (res["ci_low"], res["ci_high"]) == pytest.approx(tuple(ref.conf_int(0.05)[0]), rel=1e-9)
    # per-comparison: the same pair's own 2 df (the paired t test), a wider interval
    own = stats.seed_test(np.repeat((yb - ya)[:, None], 101, axis=1))
    assert own["df"] == 2 and own["p_value"] == pytest.approx(sps.ttest_rel(yb, ya).pvalue, rel=1e-9)


def test_the_example_part_is_counted_once():
    """Binary scores with no seed effect: a run's own example noise is in the spread over seeds and must not be
    counted again in the example part (the two-way bootstrap counted it twice and more: variance x 2.8 here). The
    true variance is 2 E[p (1 - p)] / (seeds x examples), p ~ U(0.2, 0.6), so E[p (1 - p)] = 0.4 - 0.16 - 0.16 / 12;
    the estimate exceeds it only by the floor on s^2 (a run's own noise: E[max(chi2_9 / 9, 1)] = 1.185 here) and the
    example part's truncation at 0."""
    rng = np.random.default_rng(8)
    var = [stats.compare(*arms(rng, n=200, seeds=10, seed_sd=0.0), opts=stats.Options(n_boot=200, seed=i))["se"] ** 2
           for i in range(100)]
    assert 1.0 < np.mean(var) / (2 * (0.4 - 0.16 - 0.16 / 12) / (10 * 200)) < 1.35


def test_the_two_parts_added_in_quadrature_keep_alpha():
    """2 seeds, an example part Var(e) of lam x the seed part: the two parts at their own quantiles (normal, t at
    1 df) added in quadrature reject at most alpha, where Student's t with the Welch-Satterthwaite df of the sum
    rejects ~12% at lam = 0.05 and 0.2. The bootstrap columns are built to carry exactly Var(e) and no run's own
    noise, so seed_test computes the rule itself. 2,000 draws per lam: Monte-Carlo sd 0.005 at a rate of 0.05."""
    rng = np.random.default_rng(11)
    for lam, satt_rate in ((0.05, 0.10), (0.2, 0.09), (1.0, 0.055)):
        ours, satt = [], []
        for _ in range(2000):
            x = np.empty((2, 3))
            x[:, 0] = rng.normal(0, np.sqrt(lam)) + rng.normal(0, np.sqrt(2), 2)  # Var(u) / S = 1
            x[:, 1:] = [np.sqrt(lam / 2), -np.sqrt(lam / 2)]  # shared by both seeds: variance lam (ddof 1)
            res = stats.seed_test(x)
            ours.append(res["p_value"] < 0.05)
            q = np.var(x[:, 0], ddof=1) / 2
            satt.append(2 * sps.t.sf(abs(res["diff"]) / res["se"], (lam + q) ** 2 / q ** 2) < 0.05)
        assert np.mean(ours) <= 0.06 and np.mean(satt) >= satt_rate, (lam, np.mean(ours), np.mean(satt))


def test_seeds_that_tie_do_not_make_it_certain():
    """Binary scores on 2 seeds whose differences tie exactly (3 of 60 examples better on each seed: s^2 = 0): the
    seed part is at least a run's own example noise (at its normal quantile: the examples measure it), so p is the
    examples' normal test, ~0.015 (exact McNemar on the 6 discordant pairs: 0.031), not 0 (without the floor, such
    ties made most of the false "significant"s in bench/stats_simulation.py)."""
    a = (np.random.default_rng(10).random((2, 60)) < 0.5).astype(float)
    b = a.copy()
    for s, cols in enumerate(([0, 1, 2], [30, 31, 32])):
        a[s, cols] = 1.0
        b[s, cols] = 0.0
    res = stats.compare(a, b)
    assert res["diff"] == pytest.approx(0.05) and res["df"] == 1
    assert res["p_value"] == pytest.approx(2 * sps.norm.sf(res["diff"] / res["se"]), rel=1e-6)
    assert 0.01 < res["p_value"] < 0.03


def test_seed_dominated_noise_keeps_its_error_rate():
    """The case the two-way bootstrap got wrong (the demo's prose bits per byte: seed sd 0.28 against little example
    noise). 2 seeds, seed noise and an example part shared by the seeds a tenth of its size. Over 200 null pairs,
    p < 0.05 at most at alpha plus two binomial sd (0.081), and 95% intervals that cover. Here the two-way bootstrap's
    normal test said p < 0.05 in 24.5%, and Student's t with the Welch-Satterthwaite df of the sum in 10%."""
    rng = np.random.default_rng(9)
    res = [stats.compare(*continuous(rng, 2, example_sd=np.sqrt(0.1 * 50)), opts=stats.Options(n_boot=200, seed=i))
           for i in range(200)]
    assert np.mean([r["p_value"] < 0.05 for r in res]) <= 0.081
    assert np.mean([r["ci_low"] <= 0 <= r["ci_high"] for r in res]) >= 0.93
    assert all(r["df"] == 1 for r in res)


def test_lower_is_better_is_oriented():
    rng = np.random.default_rng(4)
    bpb_a = rng.normal(1.5, 0.2, (2, 100))
    res = stats.compare(bpb_a, bpb_a + 0.3, higher_is_better=False)
    assert res["diff"] < 0 and res["a_better"] is True and res["p_mcnemar"] is None


def test_deterministic_and_paired_input_checked():
    a, b = arms(np.random.default_rng(5))
    assert stats.compare(a, b) == stats.compare(a, b)
    with pytest.raises(ValueError, match="paired"):
        stats.compare(a, b[:, :-1])


def test_missing_scores_are_left_out_of_the_mean():
    x = np.array([[1.0, 0.0, np.nan, 1.0]])
    assert stats.mean_interval(x)["value"] == pytest.approx(2 / 3)


def test_weighted_mean_for_ratio_metrics():
    bpb, nbytes = np.array([[1.0, 3.0]]), np.array([300.0, 100.0])
    assert stats.mean_interval(bpb, weights=nbytes)["value"] == pytest.approx((300 + 300) / 400)


def test_multiple_comparison_correction():
    p = np.array([0.01, 0.04, 0.03, np.nan])
    np.testing.assert_allclose(stats.adjust(p, "holm")[:3], [0.03, 0.06, 0.06])
    np.testing.assert_allclose(stats.adjust(p, "fdr_bh")[:3], [0.03, 0.04, 0.04])
    assert np.isnan(stats.adjust(p)[3])


def test_arm_role_from_recipe():
    assert stats.arm_role('{"steps": []}') == "bulk"
    assert stats.arm_role({"steps": [["random", {"like": "curated"}]]}) == "random control"
    assert stats.arm_role({"steps": [["filter", {}], ["dedup", {}]]}) == "curated"
    assert stats.arm_role({"steps": [["random", {"like": "c", "match": "length"}]]}) == "length-matched random"
    assert stats.arm_role({"steps": [["dedup", {}], ["longest", {"n": 5}]]}) == "longest"
    assert stats.arm_role(None) is None


def test_baseline_verdicts_pick_the_matched_baseline_of_each_curated_arm():
    import json

    import pandas as pd

    def recipe(*steps):
        return json.dumps({"steps": [list(s) for s in steps]})

    arms = [("cur", "d1", recipe(("filter", {})), 100), ("cur2", "d2", recipe(("dedup", {})), 400),
            ("rand-1k", "d3", recipe(("random", {"n": 100})), 100),
            ("rand-4k", "d4", recipe(("random", {"n": 400})), 400),
            ("len-cur", "d5", recipe(("random", {"like_dataset": "d1", "match": "length"})), 100),
            ("long", "d6", recipe(("longest", {"n": 100})), 100)]
    runs = pd.DataFrame([{"kind": "sft", "model": "m", "method": "full", "arm": a, "dataset_id": d, "recipe": r,
                          "examples": n, "role": stats.arm_role(r)} for a, d, r, n in arms])
    cmp = pd.DataFrame([{"kind": "arms", "metric": "learn", "model": "m", "a_method": "full", "a_arm": a,
                         "b_arm": b, "diff": 0.1, "ci_low": 0.05, "ci_high": 0.15, "p_holm": p,
                         "significant": p < 0.05, "better": "a"}
                        for a in ("cur", "cur2") for b, p in (("rand-1k", 0.01), ("rand-4k", 0.01),
                                                              ("len-cur", 0.2), ("long", 0.001))])
    v = stats.baseline_verdicts(runs, cmp)
    got = {(r.arm, r.baseline): (r.baseline_arm, r.beats) for r in v.itertuples()}
    assert got == {("cur", "random control"): ("rand-1k", True),  # the same-size one of the free random arms
                   ("cur", "length-matched random"): ("len-cur", False),  # made for cur; p 0.2 after Holm
                   ("cur", "longest"): ("long", True),
                   ("cur2", "random control"): ("rand-4k", True), ("cur2", "longest"): ("long", True)}
    # cur2 has no length-matched control: none made for it, and len-cur is cur's
    from harness.analysis import report

    rows = {(r["what"], r["baseline"]): r["verdict"] for r in report.baseline_rows(runs, cmp)}
    assert rows[("m full: cur", "length-matched random (len-cur)")] == "does not beat it"
    assert rows[("m full: cur", "longest (long)")] == "beats it" and len(rows) == 5


def test_the_primary_family_of_the_presets():
    """curated vs each control made for it or for no arm, per method; full vs LoRA per arm; learn and forget."""
    from harness.spec import load_matrix

    demo = stats.of_matrix(load_matrix("demo"))
    assert demo.size() == 14  # 2 metrics x (2 pairs x 2 methods + 1 pair x 3 arms)
    assert demo.primary("arms", "curated", "bulk", "learn") and demo.primary("arms", "random", "curated", "forget")
    assert not demo.primary("arms", "random", "bulk", "learn") and not demo.primary("arms", "curated", "bulk",
                                                                                   "skills_arith")
    assert demo.primary("methods", "full", "lora", "learn")
    qq = load_matrix("quality-vs-quantity")
    arms = stats.arms_from_spec(qq)
    assert stats.controls(arms, "best-of-k") == ["bulk-1k", "bulk-4k", "bulk-16k", "longest-1k",
                                                        "random-like-best-of-k", "length-like-best-of-k"]
    assert [a for a, i in arms.items() if i.dose] == ["bulk-1k", "bulk-4k", "bulk-16k"]


def _simulation():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import stats_simulation

    return stats_simulation


def test_the_simulation_model_recovers_its_parameters():
    """bench/stats_simulation.py's fit, on scores drawn from its own parametric model: run offsets and example
    effects come back (the model the error rates are measured under is the one fitted)."""
    sim = _simulation()
    truth = sim.parametric(n=400)
    rng = np.random.default_rng(0)
    runs = sim.layout(seeds=8)
    ex = {t.name: np.arange(len(t.values)) for t in truth.tasks}  # the fitted examples themselves, once each
    got = {t.name: t for t in sim.fit(sim.draw(truth, runs, ex, rng)).tasks}
    for t in truth.tasks:
        g = got[t.name]
        assert abs(g.run_sd - t.run_sd) < 0.5 * t.run_sd, t.name  # one task: 42 degrees of freedom, noisy
        assert np.corrcoef(g.values, t.values)[0, 1] > 0.7, t.name
    # over the five learn tasks: the seed-to-seed sd, not the examples' binomial noise (~0.11 here) added to it
    assert np.mean([got[t.name].run_sd for t in truth.tasks if t.group == "learn"]) == pytest.approx(0.15, rel=0.2)
    assert sim.learn_effect(truth, sim.delta_for(truth, 0.144)) == pytest.approx(0.144, abs=1e-6)


@pytest.mark.slow
def test_error_rates_by_simulation():
    """Matrices whose arms are identical in distribution, through stats.analyse: a primary "significant" in at most
    ~alpha of them and 95% intervals that cover, on the parametric model and on the one fitted to real runs (where
    the two-way bootstrap's test said "significant" in 62% of matrices: seed-heavy forget noise, 2 seeds); power
    against the demo's effect with 2 seeds (the seed noise pooled over the matrix: with each comparison's own
    seeds, one degree of freedom, it was 0%); and harness check's false alarms on a candidate identical to its
    baseline (the fitted model with 5 seeds). (Fewer matrices than bench/stats_simulation.py's 200, so the bounds
    are looser.)"""
    from pathlib import Path

    sim = _simulation()
    model = sim.parametric()
    fitted = sim.Model.load(Path(__file__).resolve().parent.parent / "bench" / "stats_model_mini_demo.json")
    for m in (model, fitted):
        null = sim.simulate_report(m, 60, n_boot=300)
        assert null["primary_size"] == 14 and null["fwer_primary"]["k"] <= 6, m.source  # <= 10% of 60
        assert null["coverage"] >= 0.93, m.source
    alt = sim.simulate_report(model, 20, seeds=2, n_boot=300, effect=sim.delta_for(model, sim.DEMO_EFFECT), seed=1)
    assert alt["power_vs_bulk"]["rate"] >= 0.8 and alt["coverage"] >= 0.9
    for m, seeds in ((model, 2), (fitted, 5)):
        chk = sim.simulate_check(m, 20, seeds=seeds, n_boot=300, seed=2)
        assert chk["false_alarm_default_policy"]["k"] <= 2 and chk["false_alarm_no_allowance"]["k"] <= 3, m.source


def test_check_pools_the_seed_noise_of_its_cells():
    """harness check's policy seed_noise: pooled (the default) measures a change's seed noise over every trained cell
    paired by seed, 6 cells x (2 - 1) = 6 degrees of freedom in the demo's layout; per-cell, each cell's own 1."""
    from harness.analysis import check

    sim = _simulation()
    model, runs, rng = sim.parametric(n=40), sim.layout(seeds=2), np.random.default_rng(3)
    ex = sim.draw_examples(model, rng)
    b, c = (sim.side(sim.draw(model, runs, ex, rng), label) for label in ("baseline", "candidate"))
    for noise, df in (("pooled", 6), ("per-cell", 1)):
        res = check.compare(b, c, check.Policy(n_boot=200, seed_noise=noise))
        sft = res.rows[~res.rows["cell"].str.endswith("/base")]
        assert set(sft["df"]) == {df} and f"({df} degrees of freedom)" in res.family, noise
