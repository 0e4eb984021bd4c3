"""`harness check`: the gate against the committed baseline, a planted regression, bad inputs, JUnit, the decision."""

import copy
import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from harness import store
from harness.analysis import check
from harness.cli import app

ROOT = Path(__file__).resolve().parent.parent
CHECK_MATRIX = ROOT / "tests" / "matrices" / "check.yaml"
BASELINE = ROOT / "tests" / "baselines" / "check.json"
POLICY = ROOT / "tests" / "baselines" / "check-policy.yaml"
runner = CliRunner()


@pytest.fixture(scope="session")
def check_runs(tmp_path_factory, micro_base):
    """The gate's matrix as committed, and the same matrix with 90% of its answers made wrong (a corrupted-label
    regression), run at the same time (~35 s on 2 cores, against ~60 s one after the other: the base model's
    evaluation is short, so each run alone leaves a core idle). Each keeps the default of one thread per worker:
    the baseline reproduces bit for bit only with the thread count it was made with. Returns the results folders."""
    root = tmp_path_factory.mktemp("check")
    planted = root / "planted.yaml"
    text = CHECK_MATRIX.read_text()
    planted.write_text(text.replace("{wrong: 0.0,", "{wrong: 0.9,"))
    assert "{wrong: 0.9," in planted.read_text()
    folders, procs = [], []
    for name, matrix in (("good", CHECK_MATRIX), ("planted", planted)):
        results = root / name
        log = (root / f"{name}.log").open("w")
        procs.append((subprocess.Popen([sys.executable, "-m", "harness.cli", "matrix", "run", str(matrix),
                                        "--results", str(results)], stdout=log, stderr=log), log))
        folders.append(results)
    for (proc, log), results in zip(procs, folders):
        assert proc.wait(timeout=600) == 0, (root / f"{results.name}.log").read_text()[-3000:]
        log.close()
    return tuple(folders)


@pytest.fixture(scope="session")
def good(check_runs) -> Path:
    return check_runs[0]


@pytest.fixture(scope="session")
def planted(check_runs) -> Path:
    return check_runs[1]


def run_check(results: Path, *args: str):
    return runner.invoke(app, ["check", "--results", str(results), *args])


def junit_cases(path: Path) -> tuple[ET.Element, list[ET.Element]]:
    suite = ET.parse(path).getroot()
    assert suite.tag == "testsuite"
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases)
    assert int(suite.get("failures")) == sum(c.find("failure") is not None for c in cases)
    return suite, cases


def test_candidate_passes_against_the_committed_baseline(good, tmp_path):
    """What CI runs (.ci/run): on this CPU the same seed reproduces the baseline, so nothing moves at all."""
    res = run_check(good, "--baseline", str(BASELINE), "--candidate", "check", "--policy", str(POLICY),
                    "--junit", str(tmp_path / "j.xml"), "--markdown", str(tmp_path / "m.md"))
    assert res.exit_code == 0, res.output
    assert "PASS: no regression in 3 gated metrics" in res.output
    suite, cases = junit_cases(tmp_path / "j.xml")
    assert suite.get("failures") == "0" and len(cases) == 3  # learn of the base; learn and forget of full/skills
    assert {(c.get("classname"), c.get("name")) for c in cases} == {
        ("harness.check.micro/base", "learn"), ("harness.check.micro/full/skills", "learn"),
        ("harness.check.micro/full/skills", "forget")}
    md = (tmp_path / "m.md").read_text()
    assert md.startswith("### harness check: PASS") and md.count("\n| micro/") == 9


def test_planted_regression_fails(planted, tmp_path):
    res = run_check(planted, "--baseline", str(BASELINE), "--candidate", "check", "--policy", str(POLICY),
                    "--junit", str(tmp_path / "j.xml"), "--markdown", str(tmp_path / "m.md"))
    assert res.exit_code == 1, res.output
    learn = next(line for line in res.output.splitlines() if "micro/full/skills" in line and "│ learn " in line)
    assert "REGRESSION" in learn
    assert "data.recipe.source.defects.wrong: 0.0 -> 0.9" in res.output  # what changed is named
    assert "FAIL: 1 of 3 gated metrics regressed: micro/full/skills learn" in res.output
    suite, cases = junit_cases(tmp_path / "j.xml")
    failed = [c for c in cases if c.find("failure") is not None]
    assert suite.get("failures") == "1" and len(failed) == 1
    assert (failed[0].get("classname"), failed[0].get("name")) == ("harness.check.micro/full/skills", "learn")
    assert "**REGRESSION**" in (tmp_path / "m.md").read_text()
    with store.reader(planted / "harness.duckdb") as con:
        rows = con.execute("SELECT cell, metric, gated, status, change < -0.2, p_adjusted < 0.05 FROM check_results "
                           "WHERE status = 'regression' AND gated").fetchall()
    assert rows == [("micro/full/skills", "learn", True, "regression", True, True)]


def edited(tmp_path: Path, change) -> Path:
    body = json.loads(BASELINE.read_text())
    change(body)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(body))
    return path


def sft_run(body: dict) -> dict:
    return next(r for r in body["runs"] if r["kind"] == "sft")


def one_line_error(res, code: int = 2) -> str:
    assert res.exit_code == code, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


def test_mismatched_baseline_is_bad_input(good, ci_run, tmp_path):
    # another matrix: other tasks and cells
    ci_results, _ = ci_run
    shutil.copy(ci_results / "harness.duckdb", tmp_path / "ci.duckdb")
    msg = one_line_error(runner.invoke(app, ["check", "--db", str(tmp_path / "ci.duckdb"), "--baseline",
                                             str(BASELINE), "--candidate", "ci"]))
    assert "eval: task skills_arith only in the candidate" in msg
    assert "eval: task skills_words only in the baseline" in msg
    # another base model
    path = edited(tmp_path, lambda b: sft_run(b)["config"].update(model_fingerprint="micro-000000000000"))
    msg = one_line_error(run_check(good, "--baseline", str(path), "--candidate", "check"))
    assert "micro/full/skills: model.model_fingerprint: \"micro-000000000000\" -> \"micro-ab64a78b9553\"" in msg
    # other examples scored
    path = edited(tmp_path, lambda b: b["tasks"]["skills_words"].update(examples="0" * 16))
    msg = one_line_error(run_check(good, "--baseline", str(path), "--candidate", "check"))
    assert "eval: skills_words examples: 32 examples 00000000 -> 32 examples" in msg
    # no such baseline, not a baseline, broken JSON
    msg = one_line_error(run_check(good, "--baseline", str(tmp_path / "nope.json")))
    assert "file not found" in msg
    msg = one_line_error(run_check(good, "--baseline", "nope"))
    assert "no such file, and no saved baseline, matrix or run of that name" in msg and "(matrices: check)" in msg
    (tmp_path / "bad.json").write_text('{"format": "harness-check-baseline/1",\n "runs": [}')
    assert ":2: invalid JSON" in one_line_error(run_check(good, "--baseline", str(tmp_path / "bad.json")))
    (tmp_path / "other.json").write_text("{}")
    assert "not a harness baseline" in one_line_error(run_check(good, "--baseline",
                                                                str(tmp_path / "other.json")))
    assert "--baseline: required" in one_line_error(run_check(good))


def test_what_must_match_is_the_policys_choice(good, tmp_path):
    """A changed training config is the change under test (listed) unless the policy says it must match."""
    path = edited(tmp_path, lambda b: sft_run(b)["config"]["train"].update(lr=0.02))
    res = run_check(good, "--baseline", str(path), "--candidate", "check")
    assert res.exit_code == 0, res.output
    assert "changed since the baseline: micro/full/skills: train.lr: 0.02 -> 0.01" in res.output
    (tmp_path / "strict.yaml").write_text("match: [model, eval, train]\n")
    msg = one_line_error(run_check(good, "--baseline", str(path), "--candidate", "check",
                                   "--policy", str(tmp_path / "strict.yaml")))
    assert "(match: model, eval, train): micro/full/skills: train.lr: 0.02 -> 0.01" in msg


@pytest.mark.parametrize("text, expected", [
    ("alpha: 0.05\nalpah: 0.1\n", "policy.yaml:2: alpah: unknown key; expected one of alpha, correction"),
    ("max_drop:\n  abs: lots\n", "policy.yaml:2: max_drop.abs: expected a number (or null), got 'lots'"),
    ("correction: bonferroni\n", "policy.yaml:1: correction: expected 'holm' or 'bh' or 'none'"),
    ("alpha: 2\n", "policy.yaml:1: alpha: expected a number between 0 and 1"),
    ("gate: [learn,\n  lern]\n", "policy.yaml:2: gate.1: unknown metric 'lern'; expected one of learn, forget"),
    ("cells: [full/curated]\n", "policy.yaml:1: cells.0: unknown cell 'full/curated'; expected all or one of base"),
    ("gate: [learn\n", "policy.yaml:2: invalid YAML"),
])
def test_bad_policy_is_bad_input(good, tmp_path, text, expected):
    (tmp_path / "policy.yaml").write_text(text)
    msg = one_line_error(run_check(good, "--baseline", str(BASELINE), "--candidate", "check",
                                   "--policy", str(tmp_path / "policy.yaml")))
    assert expected in msg


def test_default_policy_file_is_the_dataclass_defaults():
    policy, _ = check.load_policy(None)
    assert policy == check.Policy()
    assert yaml.safe_load(check.DEFAULT_POLICY.read_text()).keys() == check.Policy.__dataclass_fields__.keys()


def test_baselines_in_the_database(good, tmp_path):
    db = tmp_path / "copy.duckdb"
    shutil.copy(good / "harness.duckdb", db)
    res = runner.invoke(app, ["check", "--db", str(db), "--candidate", "check", "--save-baseline", "good"])
    assert res.exit_code == 0 and "saved as 'good'" in res.output
    res = runner.invoke(app, ["check", "--db", str(db), "--baseline", "good", "--candidate", "latest"])
    assert res.exit_code == 0 and res.output.count("no change") == 9, res.output
    # a matrix as the baseline, and one run id as the candidate (only its cell and its base are compared)
    with store.reader(db) as con:
        run_id = con.execute("SELECT run_id FROM runs WHERE kind = 'sft'").fetchone()[0]
    res = runner.invoke(app, ["check", "--db", str(db), "--baseline", "check", "--candidate", run_id])
    assert res.exit_code == 0 and res.output.count("no change") == 9 and run_id in res.output, res.output


def test_seeds_that_differ_are_compared_unpaired(good, tmp_path):
    path = edited(tmp_path, lambda b: sft_run(b).update(seed=7))
    res = run_check(good, "--baseline", str(path), "--candidate", "check")
    assert res.exit_code == 0, res.output
    assert "seeds differ (baseline [7], candidate [0]): compared unpaired over seeds" in res.output


# ---------------------------------------------------------------------------------------------------------------
# The decision on simulated scores: a regression must be beyond the allowance AND significant.


def side(scores: np.ndarray, label: str) -> check.Side:
    """One learn task scored 0/1: a base run (all wrong) and one fine-tuned run."""
    n = scores.size
    run = {"kind": "sft", "model": "m", "method": "full", "method_kind": "full", "arm": "a", "seed": 0,
           "base_run_id": "b", "harness_version": "0", "config": {"model_fingerprint": "m"}, "data": None}
    body = {"format": check.FORMAT, "source": label,
            "runs": [dict(run, run_id="b", kind="base", method="base", arm=None, seed=None), dict(run, run_id="r")],
            "tasks": {"t": {"group": "learn", "metric": "exact_match", "examples": "x", "doc_ids": list(range(n)),
                            "scores": {"b": [0.0] * n, "r": scores.tolist()}}}}
    return check.from_json(copy.deepcopy(body), label)


@pytest.mark.parametrize("n, acc_base, acc_cand, status", [
    (10, 0.3, 0.1, "not significant"),  # a drop of 0.2 on 10 examples: beyond the allowance, but noise can do that
    (4000, 0.6, 0.585, "within allowance"),  # a significant drop of 0.015 on 4,000 examples: allowed (0.6 x 5%)
    (400, 0.6, 0.4, "regression"),
    (400, 0.4, 0.6, "improved"),
])
def test_regression_needs_both_allowance_and_significance(n, acc_base, acc_cand, status):
    u = (np.arange(n) + 0.5) / n  # example difficulties; an example is solved below the accuracy (paired sides)
    res = check.compare(side((u < acc_base).astype(float), "baseline"), side((u < acc_cand).astype(float), "cand"),
                        check.Policy(gate=["learn"]))
    row = res.rows.set_index(["cell", "metric"]).loc[("m/full/a", "learn")]
    assert row["status"] == status, row.to_dict()
    assert res.passed == (status != "regression")
    if status == "within allowance":
        assert row["p_adjusted"] < 0.05


def test_the_gated_rows_are_the_primary_family():
    """Holm over the gated rows, Benjamini-Hochberg over the rest (exploratory), and the family named with its size:
    both corrections equal statsmodels' multipletests on their rows."""
    from statsmodels.stats.multitest import multipletests

    u = (np.arange(400) + 0.5) / 400
    res = check.compare(side((u < 0.6).astype(float), "baseline"), side((u < 0.5).astype(float), "cand"),
                        check.Policy(gate=["learn"]))
    rows = res.rows  # learn of the fine-tuned cell and of the base (gated); the task's own rows (not)
    assert res.family.startswith(f"primary family: {int(rows['gated'].sum())} gated rows = metrics learn x 2 cells, "
                                 f"holm-corrected; {int((~rows['gated']).sum())} other rows exploratory")
    for gated, method in ((True, "holm"), (False, "fdr_bh")):
        sel = rows[rows["gated"] == gated]
        np.testing.assert_allclose(sel["p_adjusted"], multipletests(sel["p_value"], method=method)[1])
    assert res.family in check.markdown(res)


def test_contaminated_training_rows_fail_the_check_when_gated():
    """max_contaminated_rows gates the candidate's contamination audit; by default it is only reported."""
    scores = (np.arange(100) < 60).astype(float)
    cand = side(scores, "cand")
    cand.contamination = [("a", "t", 3)]
    assert check.compare(side(scores, "baseline"), cand, check.Policy()).passed
    assert check.compare(side(scores, "baseline"), cand, check.Policy(max_contaminated_rows=3)).passed
    res = check.compare(side(scores, "baseline"), cand, check.Policy(max_contaminated_rows=0))
    assert not res.passed and res.regressions.empty
    assert check.verdict(res).startswith("FAIL: no regression") and "arm a: 3 training rows overlap t" in \
        check.verdict(res)


def test_example_workflow_runs_the_gate():
    """docs/ci-example.yml: valid YAML whose steps run the committed matrix and gate on `harness check`."""
    wf = yaml.safe_load((ROOT / "docs" / "ci-example.yml").read_text())
    steps = wf["jobs"]["quality-gate"]["steps"]
    script = "\n".join(s.get("run", "") for s in steps)
    assert "harness matrix run tests/matrices/check.yaml" in script
    assert "harness check --baseline tests/baselines/check.json" in script and "--junit" in script
    assert "GITHUB_STEP_SUMMARY" in script
    assert any(s.get("uses", "").startswith("actions/upload-artifact") for s in steps)
