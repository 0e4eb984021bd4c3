"""`harness runs`, `harness show` (with the lm_eval command lines that reproduce a run), `harness export`."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from harness.cli import app


def cli(*args) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def lora_run(results: Path) -> str:
    with duckdb.connect(str(results / "harness.duckdb"), read_only=True) as con:
        return con.execute("SELECT run_id FROM runs WHERE method = 'lora' AND arm = 'curated'").fetchone()[0]


def test_runs_lists_and_filters(ci_run):
    results, _ = ci_run
    every = cli("runs", "--results", str(results))
    assert "5 run(s)" in every and "base" in every
    lora = cli("runs", "--method", "lora", "--arm", "curated", "--matrix", "ci", "--results", str(results))
    assert "1 run(s)" in lora and lora_run(results) in lora
    assert "0 run(s)" in cli("runs", "--matrix", "no-such-matrix", "--results", str(results))


def test_show_prints_config_scores_cost_and_commands(ci_run):
    results, _ = ci_run
    rid = lora_run(results)
    text = cli("show", rid[:6], "--results", str(results))
    assert f"run {rid}" in text and "learn: [skills_arith, skills_facts]" in text
    assert "world_mc" in text and "95% interval" in text and "total_cost_usd" in text
    assert "harness data show" in text
    assert text.count("lm_eval --model hf") == 2 and "--apply_chat_template --fewshot_as_multiturn" in text
    assert "peft=" in text
    assert text.count("attn_implementation=sdpa") == 2  # scored with SDPA, trained with eager attention on CPU
    bad = CliRunner().invoke(app, ["show", "zzzz", "--results", str(results)])
    assert bad.exit_code == 2 and "no such run" in bad.output


@pytest.mark.slow
def test_lm_eval_cli_reproduces_the_stored_scores_from_another_directory(ci_run, tmp_path):
    """The commands `harness show` prints, run as they are by a shell in an unrelated folder."""
    from harness.store import export

    results, _ = ci_run
    db = results / "harness.duckdb"
    run = export.find_run(db, lora_run(results))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the venv's lm_eval
    got = {}
    for group, cmd in export.lm_eval_commands(run, results).items():
        out = tmp_path / group
        res = subprocess.run(f"{cmd} --output_path {shlex.quote(str(out))}", shell=True, cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        body = json.loads(next(out.rglob("results_*.json")).read_text())
        for task, vals in body["results"].items():
            got |= {(task, k.split(",")[0]): v for k, v in vals.items() if k.endswith(",none") and "stderr" not in k}
    with duckdb.connect(str(db), read_only=True) as con:
        stored = {(t, m): v for t, m, v in con.execute("SELECT task, metric, value FROM evals WHERE run_id = ?",
                                                        [run["run_id"]]).fetchall()}
    assert got == stored  # every task and metric, to the last bit


def test_export_parquet_has_every_table_and_view(ci_run, tmp_path):
    results, _ = ci_run
    cli("export", str(tmp_path / "pq"), "--results", str(results))
    with duckdb.connect(str(results / "harness.duckdb"), read_only=True) as con:
        names = {r[0]: con.execute(f'SELECT count(*) FROM "{r[0]}"').fetchone()[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
    assert {"runs", "evals", "samples", "summary", "run_scores", "costs"} <= set(names)
    assert {p.stem: pq.read_metadata(p).num_rows for p in (tmp_path / "pq").glob("*.parquet")} == names
    assert not list(tmp_path.glob(".*"))  # no temporary folder left


def test_export_lm_eval_results_json(ci_run, tmp_path):
    results, _ = ci_run
    rid = lora_run(results)
    cli("export", str(tmp_path / "le"), "--format", "lm-eval", "--run", rid, "--results", str(results))
    path, = (tmp_path / "le" / rid).glob("results_*.json")
    body = json.loads(path.read_text())
    with duckdb.connect(str(results / "harness.duckdb"), read_only=True) as con:
        acc, n = con.execute("SELECT value, n FROM evals WHERE run_id = ? AND task = 'world_mc' AND metric = 'acc'",
                             [rid]).fetchone()
    assert body["results"]["world_mc"]["acc,none"] == acc and body["n-samples"]["world_mc"]["effective"] == n
    assert body["higher_is_better"]["prose_bpb"]["bits_per_byte"] is False
    assert set(body) >= {"results", "versions", "n-shot", "higher_is_better", "n-samples", "config"}
    every = CliRunner().invoke(app, ["export", str(tmp_path / "all"), "--format", "lm-eval", "--results", str(results)])
    assert every.exit_code == 0 and len(list((tmp_path / "all").glob("*/results_*.json"))) == 5
