"""The `harness` command: every command answers --help, and a bad input of each kind (matrix file, flag value, model
reference, data file, recipe file, results folder) is one line naming the file or key, exit code 2, nothing written."""

import json
import re
from pathlib import Path

import pytest
import yaml

from harness import store
from harness.cli import app

from conftest import CI_MATRIX
from helpers import cli, commands, one_line_error

BAD_MATRICES = yaml.safe_load((Path(__file__).parent / "bad_matrices.yaml").read_text())


@pytest.mark.parametrize("command", sorted(commands()))
def test_every_command_answers_help(command):
    res = cli.invoke(app, [*command.split(), "--help"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert re.search(rf"Usage: \S+ {command} ", text), text  # its own help, not its group's
    assert " ".join(commands()[command].split()[:6]) in text


@pytest.mark.parametrize("case", [pytest.param(k, marks=pytest.mark.slow if v.get("slow") else ())
                                  for k, v in BAD_MATRICES.items()])
def test_bad_matrix_file_is_one_line_exit_2_and_writes_nothing(case, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_MATRICES[case]["file"])
    results = tmp_path / "results"
    line = one_line_error(cli.invoke(app, ["matrix", "run", str(path), "--results", str(results)]))
    assert re.search(BAD_MATRICES[case]["error"], line), line
    assert not results.exists()  # nothing written: no database, no folders


def test_missing_matrix_file(tmp_path):
    res = cli.invoke(app, ["matrix", "plan", str(tmp_path / "nope.yaml")])
    assert "nope.yaml: file not found" in one_line_error(res)


def test_bad_executor_flag_is_one_line_exit_2(tmp_path):
    res = cli.invoke(app, ["matrix", "run", str(CI_MATRIX), "--executor", "mpi", "--results", str(tmp_path)])
    assert one_line_error(res) == "error: --executor: expected one of local, ray, slurm, got 'mpi'"
    assert not (tmp_path / "harness.duckdb").exists()


@pytest.mark.parametrize("ref, expected", [
    ("no-such-alias", r"not a built-in alias .*smollm2-135m.*hub id"),
    ("tests/test_models.py", r"a file, but not a \.gguf file"),
    ("tests", r"has no config\.json"),
])
def test_bad_model_refs_exit_2_with_one_line(ref, expected):
    res = cli.invoke(app, ["eval", ref, "--results", "/nonexistent-results"])
    assert re.search(expected, one_line_error(res))


@pytest.mark.parametrize("text, expected", [
    ("source: skills_pool\nsteps: [dedup]\nstep: []\n", r"recipe\.yaml: step: unknown key; expected one of"),
    ("source: skills_pool\nsteps: [{filter: {scorer: heuristic, max_wrds: 3}}]\n",
     r"recipe\.yaml: steps\.0\.filter\.max_wrds: unknown key; expected one of .*max_words"),
])
def test_bad_recipe_file_is_one_line_exit_2(tmp_path, text, expected):
    (tmp_path / "recipe.yaml").write_text(text)
    res = cli.invoke(app, ["data", "build", str(tmp_path / "recipe.yaml"), "--results", str(tmp_path / "results")])
    assert re.search(expected, one_line_error(res))
    assert not (tmp_path / "results").exists()


def test_sql_without_a_results_database_is_one_line_exit_2(tmp_path):
    res = cli.invoke(app, ["sql", "SELECT 1", "--results", str(tmp_path / "nowhere")])
    assert "no results database at" in one_line_error(res)
    assert not (tmp_path / "nowhere").exists()


@pytest.fixture
def empty_db(tmp_path):
    with store.writer(tmp_path / "harness.duckdb"):
        pass
    return tmp_path


def test_sql_csv_ends_lines_with_newline_only(empty_db):
    res = cli.invoke(app, ["sql", "SELECT 'a' AS x UNION ALL SELECT 'b' ORDER BY x", "--results", str(empty_db),
                           "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert res.stdout_bytes == b"x\na\nb\n"  # bytes: Result.output turns CRLF into LF


@pytest.mark.parametrize("query", [
    "COPY (SELECT 42 AS x) TO '{out}'",
    "SELECT * FROM read_text('/etc/hostname')",
    "ATTACH '{out}' AS other",
    "SET enable_external_access = true",
])
def test_sql_has_no_side_effects_outside_the_database(empty_db, query):
    out = empty_db / "written.csv"
    res = cli.invoke(app, ["sql", query.format(out=out), "--results", str(empty_db)])
    line = one_line_error(res)
    assert "disabled by configuration" in line or "configuration has been locked" in line, line
    assert not out.exists()


def test_plan_lists_what_is_matched():
    res = cli.invoke(app, ["matrix", "plan", str(CI_MATRIX)])
    assert res.exit_code == 0, res.output
    assert "4 optimizer steps of 4 examples" in res.output and "NOT matched: epochs" in res.output
    assert "pending" in res.output
    # the primary family, before anything runs: ci has curated vs bulk (2 methods) and full vs lora (2 arms)
    assert "primary family: 8 comparisons = 2 metrics (learn, forget) x 4 contrasts" in " ".join(res.output.split())


def test_data_build_and_show_through_the_cli(tmp_path):
    (tmp_path / "sft.jsonl").write_text(
        "".join(json.dumps({"prompt": f"What is {i} + {i}?", "response": str(2 * i)}) + "\n" for i in range(8))
        + json.dumps({"prompt": "What is 1 + 1?", "response": "2"}) + "\n"  # an exact duplicate of line 2
        + json.dumps({"prompt": "What is 9 + 9?", "response": "18 " * 30}) + "\n"  # too long
        + "not json\n")
    (tmp_path / "recipe.yaml").write_text(
        "source: sft.jsonl\nsteps: [dedup, {filter: {scorer: heuristic, max_chars: 10}}]\n")
    results = tmp_path / "results"
    res = cli.invoke(app, ["data", "build", str(tmp_path / "recipe.yaml"), "--results", str(results)])
    assert "sft.jsonl:11: invalid JSON" in one_line_error(res)
    res = cli.invoke(app, ["data", "build", str(tmp_path / "recipe.yaml"), "--skip-bad", "--results", str(results)])
    assert res.exit_code == 0, res.output
    assert "8 examples from jsonl" in res.output and "malformed skipped 1" in res.output
    dataset_id = next((results / "data").iterdir()).name
    with store.reader(results / "harness.duckdb") as con:
        why = con.execute("SELECT step, example_id, reason, prompt FROM data_decisions WHERE dataset_id = ? "
                          "ORDER BY step_index", [dataset_id]).fetchall()
        assert why[0][:2] == ("dedup", "sft-9") and why[0][2] == "exact duplicate of sft-2"
        assert why[1][:2] == ("filter", "sft-10") and "max_chars" in why[1][2] and why[1][3] == "What is 9 + 9?"
        steps = con.execute("SELECT step, n_in, n_out FROM data_steps WHERE dataset_id = ? ORDER BY step_index",
                            [dataset_id]).fetchall()
        assert steps == [("dedup", 10, 9), ("filter", 9, 8)]
        assert con.execute("SELECT n_source, n_bad, generated_tokens FROM datasets").fetchall() == [(10, 1, 0)]
    shown = cli.invoke(app, ["data", "show", dataset_id[:6], "--results", str(results)])
    assert shown.exit_code == 0 and "exact duplicate of sft-2" in shown.output and "heuristic: mean" in shown.output
    missing = cli.invoke(app, ["data", "show", "zzz", "--results", str(results)])
    assert "no match" in one_line_error(missing)
