"""`harness report` and the stat_* tables: known effects found, numbers consistent, text escaped, file offline, and
the page rendered by a real browser (headless Chromium over the DevTools protocol)."""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from harness import store
from harness.analysis import charts, report, stats
from harness.cli import app

from helpers import one_line_error
from helpers.devtools import Chromium

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import synthetic_db  # noqa: E402

runner = CliRunner()
SECTIONS = ["run", "headline", "quantity", "cost", "learn-forget", "loss", "comparisons", "data", "samples", "method"]
CHARTS = ["quantity", "cost", "learn_forget", "loss", "forest"]
INJECTED = "<script>window.__pwned = 1</script>"


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    """A small synthetic database (5 seeds x 150 examples per task: with 3, the seed part of a test has 2 degrees of
    freedom and the planted effect does not survive Holm) with hostile text in it, and its report."""
    tmp = tmp_path_factory.mktemp("syn")
    db = synthetic_db.build(tmp / "syn.duckdb", seeds=5, docs=150)
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE samples SET response = ? || response WHERE task = 'skills_arith'", [INJECTED])
        con.execute("UPDATE samples SET prompt = '<b>bold?</b> ' || prompt WHERE task = 'skills_arith'")
        con.execute("UPDATE runs SET arm = 'bulk</script><script>window.__pwned = 2</script>' WHERE arm = 'bulk'")
    res = runner.invoke(app, ["report", "--db", str(db), "-o", str(tmp / "syn.html")])
    assert res.exit_code == 0, res.output
    return db, tmp / "syn.html"


def _rows(db: Path, sql: str) -> list[dict]:
    with store.reader(db) as con:
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


def test_planted_effects_found_and_null_effects_not(syn):
    """synthetic_db plants curated > random = bulk on learn tasks and full = lora; bulk forgets the most. Its noise
    is hashed from the run ids: one fixed draw, whose curated - random differences are 0.168 (lora) and 0.178 (full),
    so the planted 0.15 is checked loosely (the interval well above 0 and not below 0.15); the intervals' coverage is
    measured by simulation (tests/test_stats.py)."""
    db, _ = syn
    cmp = {(r["a_method"], r["a_arm"][:4], r["b_method"], r["b_arm"][:4]): r for r in _rows(
        db, "SELECT * FROM stat_comparisons WHERE metric = 'learn'")}
    for method in ("full", "lora"):
        real = cmp[(method, "cura", method, "rand")]
        assert real["significant"] and real["better"] == "a" and real["ci_low"] > 0.1 and real["ci_high"] > 0.15
        assert not cmp[(method, "rand", method, "bulk")]["significant"]
    assert not any(r["significant"] for k, r in cmp.items() if k[0] != k[2])  # full vs lora: no planted effect
    bpb = _rows(db, "SELECT * FROM stat_comparisons WHERE metric = 'prose_bpb' AND b_arm LIKE 'bulk%' "
                    "AND a_arm = 'random'")
    assert all(r["significant"] and r["diff"] < 0 and r["better"] == "a" for r in bpb)  # lower bpb is better


def test_point_estimates_agree_with_evals_and_summary(syn):
    db, _ = syn
    worst = _rows(db, """
        SELECT max(abs(s.value - e.value)) AS task, max(abs(l.value - v.learn)) AS learn,
               max(abs(f.value - v.forget)) AS forget
        FROM stat_runs s JOIN evals e ON e.run_id = s.run_id AND e.task = s.metric AND e.is_primary
        JOIN summary v ON v.run_id = s.run_id
        JOIN stat_runs l ON l.run_id = s.run_id AND l.metric = 'learn'
        JOIN stat_runs f ON f.run_id = s.run_id AND f.metric = 'forget'""")[0]
    assert max(worst.values()) < 1e-9  # bits_per_byte included: weighted by bytes, as lm-eval aggregates it
    bad = _rows(db, "SELECT * FROM stat_arms WHERE NOT (ci_low <= value + 1e-12 AND value <= ci_high + 1e-12)")
    assert bad == []


@pytest.mark.slow
def test_an_older_run_of_the_same_cell_is_left_out(tmp_path):
    """A matrix keeps the cells of its earlier versions: each (method, arm, seed) must count once, the latest."""
    db = synthetic_db.build(tmp_path / "dup.duckdb", seeds=2, docs=40)
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TEMP TABLE old AS SELECT * FROM runs WHERE run_id = 'full-cura-0'")
        con.execute("UPDATE old SET run_id = 'old-run', finished_at = TIMESTAMP '2025-01-01'")
        con.execute("INSERT INTO runs SELECT * FROM old")
        con.execute("INSERT INTO matrix_cells VALUES ('synthetic', 'old-run')")
        con.execute("INSERT INTO samples SELECT 'old-run', task, task_group, doc_id, prompt, target, response, 0, "
                    "metrics FROM samples WHERE run_id = 'full-cura-0'")
        con.execute("INSERT INTO evals SELECT 'old-run', task, task_group, metric, 0, stderr, n, higher_is_better, "
                    "is_primary FROM evals WHERE run_id = 'full-cura-0'")
    res = runner.invoke(app, ["report", "--db", str(db), "-o", str(tmp_path / "dup.html")])
    assert res.exit_code == 0, res.output
    assert "1 older run(s) of the same cells" in (tmp_path / "dup.html").read_text()
    arm = _rows(db, "SELECT n_seeds, value FROM stat_arms WHERE method = 'full' AND arm = 'curated' "
                    "AND metric = 'learn'")[0]
    learn = _rows(db, "SELECT avg(learn) AS v FROM summary WHERE method = 'full' AND arm = 'curated' "
                      "AND run_id != 'old-run'")[0]["v"]
    assert arm["n_seeds"] == 2 and arm["value"] == pytest.approx(learn)


def test_stats_api_reproduces_the_report(syn):
    """stats.compare on plain arrays gives the report's numbers (a script can recompute a comparison), with the seed
    noise pooled over the matrix's trained runs as the report pools it."""
    db, _ = syn
    with store.reader(db) as con:
        s = stats.load(con, "synthetic")
    task = s.tasks["skills_facts"]
    rows = [s.runs[(s.runs["method"] == "full") & (s.runs["arm"] == arm)].sort_values("seed")["row"]
            for arm in ("curated", "random")]
    sft = s.runs[s.runs["kind"] == "sft"]
    var, df = stats.pooled_seed_variance(np.nanmean(task.scores[sft["row"]], axis=1),
                                         (sft["method"] + "/" + sft["arm"]).to_numpy(), sft["seed"].to_numpy())
    res = stats.compare(task.scores[rows[0]], task.scores[rows[1]], task="skills_facts", pooled=(2 * var, df))
    assert res["df"] == df > len(rows[0]) - 1
    ref = _rows(db, "SELECT * FROM stat_comparisons WHERE metric = 'skills_facts' AND a_method = 'full' "
                    "AND b_method = 'full' AND a_arm = 'curated' AND b_arm = 'random'")[0]
    for k in ("diff", "se", "p_value", "effect_size", "p_mcnemar"):
        assert res[k] == pytest.approx(ref[k], rel=1e-9), k


def test_text_from_data_is_escaped(syn):
    _, html = syn
    text = html.read_text()
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in text and INJECTED not in text
    assert "&lt;b&gt;bold?&lt;/b&gt;" in text
    assert "<script>window.__pwned" not in text  # neither in the HTML nor in the charts' JSON (arm names)


def test_report_is_self_contained(syn):
    _, html = syn
    text = html.read_text()
    assert not re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, flags=re.I)
    assert not re.findall(r"<link[^>]+stylesheet", text, flags=re.I)
    assert all(f'id="{s}"' in text for s in SECTIONS)
    assert all(f'data-chart="{c}"' in text for c in CHARTS)


def test_report_from_the_ci_matrix(ci_run, tmp_path):
    results, _ = ci_run
    out = tmp_path / "ci.html"
    res = runner.invoke(app, ["report", "ci", "--results", str(results), "-o", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert all(f'id="{s}"' in text for s in SECTIONS) and "harness report: ci" in text
    res = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM stat_comparisons WHERE matrix = 'ci'",
                              "--results", str(results), "--format", "json"])
    assert json.loads(res.output)[0]["n"] > 0
    # the matrix YAML names the same matrix
    res = runner.invoke(app, ["report", str(ROOT / "tests" / "matrices" / "ci.yaml"), "--results", str(results),
                              "-o", str(tmp_path / "ci2.html")])
    assert res.exit_code == 0, res.output


def test_bad_input_is_one_line_exit_2(syn, tmp_path):
    db, _ = syn
    for args, msg in ((["report", "nope", "--db", str(db)], "no matrix named 'nope'; expected one of synthetic"),
                      (["report", "--db", str(tmp_path / "missing.duckdb")], "no results database"),
                      (["report", str(tmp_path / "missing.yaml"), "--db", str(db)], "file not found"),
                      (["report", "--db", str(db), "--boot", "5"], "--boot")):
        assert msg in one_line_error(runner.invoke(app, args))
    assert not list(tmp_path.glob("*.html"))


def test_cost_axis_prefers_dollars_then_flops(syn):
    db, _ = syn
    with store.reader(db) as con:
        runs = stats.load(con, "synthetic").runs
    assert report.cost_axis(runs)[0] == "train_tokens"
    assert report.cost_axis(runs.assign(train_flops=1e15))[0] == "train_flops"
    assert report.cost_axis(runs.assign(train_flops=1e15, total_cost_usd=0.3))[0] == "total_cost_usd"


def _x_labels(svg: str) -> list[tuple[float, str]]:
    """(x, text) of the visible labels of the x axes (Vega draws them 15 px below the axis) of a rendered chart."""
    return [(float(x), t) for x, t in re.findall(
        r'<text text-anchor="(?:middle|start|end)" transform="translate\(([-\d.]+),15\)"[^>]*opacity="1">([^<]+)</text>',
        svg)]


def test_quantity_legend_has_the_matrix_roles_and_axis_labels_keep_apart(syn):
    vl_convert = pytest.importorskip("vl_convert")
    db, _ = syn
    with store.reader(db) as con:
        s = stats.load(con, "synthetic")
    spec = charts.charts(s, stats.analyse(s, stats.Options(n_boot=50)), pd.DataFrame(), report.cost_axis(s.runs))
    scales = [e["color"]["scale"] for e in _encodings(spec["quantity"]) if "scale" in e.get("color", {})]
    assert scales and all(sc["domain"] == ["curated", "random control", "bulk"] for sc in scales)  # the demo's roles
    for name in ("quantity", "cost"):
        labels = _x_labels(vl_convert.vegalite_to_svg(spec[name]))
        assert len(labels) >= 3, (name, labels)
        for (x0, a), (x1, b) in zip(labels, labels[1:]):
            if x1 > x0:  # the next label of the same panel, centred: at least 4 px between the two
                assert x1 - x0 - (_width(a) + _width(b)) / 2 >= 4, (name, a, b, x1 - x0)


def _width(label: str) -> float:
    """Pixels of a number label in 10 px sans-serif (Helvetica/Arial metrics: digits 0.556 em, ',' and '.' 0.278)."""
    return sum(2.78 if c in ",." else 5.56 for c in label)


def _encodings(spec: dict) -> list[dict]:
    out = [spec["encoding"]] if "encoding" in spec else []
    for key in ("layer", "hconcat", "vconcat"):
        for sub in spec.get(key, []):
            out += _encodings(sub)
    return out


def test_pareto_front():
    cost = np.array([1.0, 2.0, 3.0, 3.0, 4.0])
    score = np.array([0.5, 0.4, 0.7, 0.6, 0.7])
    assert charts.pareto(cost, score).tolist() == [True, False, True, False, False]


# ---------------------------------------------------------------------------------------------------------------
# The browser: Chromium headless, driven over the DevTools protocol (helpers/devtools.py).


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI must run the browser test (.ci/run installs it)")
        pytest.skip("chromium is not installed here (apt-get install chromium); CI installs it and runs this test")
    browser = Chromium(exe, tmp_path_factory.mktemp("chromium-profile"))
    yield browser
    browser.close()


def _render(browser: Chromium, html: Path) -> dict:
    browser.events.clear()
    browser.call("Page.navigate", url=html.resolve().as_uri())
    rendered = browser.wait_for("document.readyState === 'complete' && document.body.dataset.chartsRendered")
    marks = browser.eval("""Object.fromEntries([...document.querySelectorAll('.chart')].map(
        c => [c.id, c.querySelectorAll('svg .mark-symbol path, svg .mark-line path, svg .mark-rule line').length]))""")
    return {"rendered": rendered, "marks": marks, "errors": browser.errors(), "requests": browser.requests(),
            "pwned": browser.eval("window.__pwned === undefined ? null : window.__pwned"),
            "injected_text": browser.eval("document.body.innerText.includes('<script>window.__pwned = 1</script>')")}


@pytest.mark.slow
def test_report_renders_in_chromium(chromium, syn, ci_run, tmp_path):
    _, html = syn
    page = _render(chromium, html)
    assert page["errors"] == []
    assert page["rendered"] == str(len(CHARTS))
    assert sorted(page["marks"]) == sorted(f"chart-{c}" for c in CHARTS) and all(page["marks"].values()), page
    assert page["pwned"] is None and page["injected_text"]  # the script shows as text and never runs
    assert all(u.startswith(("file:", "data:")) for u in page["requests"]), page["requests"]  # offline

    results, _ = ci_run
    out = tmp_path / "ci.html"
    assert runner.invoke(app, ["report", "ci", "--results", str(results), "-o", str(out)]).exit_code == 0
    page = _render(chromium, out)
    assert page["errors"] == [] and page["rendered"] == str(len(CHARTS)) and all(page["marks"].values()), page


def test_corrections_are_statsmodels_within_each_family(syn):
    """Holm over the primary family only (learn and forget x curated vs its controls per method, full vs LoRA per
    arm), Benjamini-Hochberg over the exploratory rest: both equal statsmodels' multipletests on those rows."""
    from statsmodels.stats.multitest import multipletests

    db, html = syn
    rows = _rows(db, "SELECT * FROM stat_comparisons")
    prim = [r for r in rows if r["family"] == "primary"]
    expl = [r for r in rows if r["family"] == "exploratory"]
    # demo layout: curated vs random and vs bulk (2 x 2 methods) + full vs lora on 3 arms = 7 contrasts x 2 metrics
    assert len(prim) == 14 and {r["metric"] for r in prim} == {"learn", "forget"}
    assert not any(r["a_arm"] == "random" and r["kind"] == "arms" for r in prim)  # random vs bulk: exploratory
    np.testing.assert_allclose([r["p_holm"] for r in prim],
                               multipletests([r["p_value"] for r in prim], method="holm")[1])
    np.testing.assert_allclose([r["q_bh"] for r in expl],
                               multipletests([r["p_value"] for r in expl], method="fdr_bh")[1])
    assert all(r["q_bh"] is None or np.isnan(r["q_bh"]) for r in prim)
    assert all(r["significant"] == (r["p_holm"] < 0.05) for r in prim)
    assert all(r["significant"] == (r["q_bh"] < 0.05) for r in expl)
    family = _rows(db, "SELECT family FROM stat_params")[0]["family"]
    assert family.startswith("primary family: 14 comparisons = 2 metrics (learn, forget) x 7 contrasts")
    import html as html_

    assert html_.escape(family, quote=False) in html.read_text()


# curated (802 examples) against bulk at 1k, 4k and 16k examples whose chance of a right answer rises by 0.1 per
# 4x examples: 0.5 + 0.1 log4(n / 1000). Curated at 0.65 is worth bulk at 1000 x 4^1.5 = 8,000 examples.
DOSE = {"curated": synthetic_db.ARMS["curated"][:3] + (0.65, 0.02, 0.05),
        "b-1k": ("random control", [["random", {"n": 1000}]], 1000, 0.50, 0.06, 0.15),
        "b-4k": ("random control", [["random", {"n": 4000}]], 4000, 0.60, 0.06, 0.15),
        "b-16k": ("bulk", [], 16000, 0.70, 0.06, 0.15)}


def test_the_exchange_rate_recovers_a_planted_one(tmp_path):
    db = synthetic_db.build(tmp_path / "dose.duckdb", seeds=3, docs=150, arms=DOSE)
    with duckdb.connect(str(db)) as con:  # cost: $0.01 per training run; curated pays $0.05 for its curation
        con.execute("UPDATE runs SET cost_usd = 0.01 WHERE kind = 'sft'")
        con.execute("UPDATE datasets SET cost_usd = CASE WHEN dataset_id = 'ds-curated' THEN 0.05 ELSE 0 END")
    res = runner.invoke(app, ["report", "--db", str(db), "-o", str(tmp_path / "dose.html")])
    assert res.exit_code == 0, res.output
    ex = {r["method"]: r for r in _rows(db, "SELECT * FROM stat_exchange")}
    assert set(ex) == {"full", "lora"}
    for r in ex.values():
        assert r["arm"] == "curated" and json.loads(r["bulk_sizes"]) == [1000, 4000, 16000]
        assert r["status"] == "within" and r["ci_low"] < 8000 < r["ci_high"] and 4000 < r["equiv_examples"] < 16000
        assert r["statement"].startswith("curated (802 examples) scores like bulk with ")
        assert r["arm_cost_usd"] == pytest.approx(0.06) and r["bulk_cost_usd"] == pytest.approx(0.01)
    page = (tmp_path / "dose.html").read_text()
    assert 'id="exchange-table"' in page and 'data-chart="exchange"' in page
    # beyond the sizes tried it is said to be, not extrapolated into a number
    out = stats.exchange_statement("c", 802, "above", 9e4, 3e4, 4e5, 1000, 16000)
    assert out == "c (802 examples) scores like more than the largest bulk size tried (16,000); 95% interval " \
                  "[> 16,000, > 16,000]"
