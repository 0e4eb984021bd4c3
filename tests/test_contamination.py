"""Contamination: evaluation documents planted in a user's JSONL are found by the audit and dropped, exactly, by the
decontaminate step, with the task and document named; the audit's table, and the check gate on it."""

import json

import duckdb
import pandas as pd
import pytest

from harness import store
from harness.data import build, world
from harness.data.curate import Context, contamination
from harness.data.recipe import load_recipe
from harness.eval.tasks import documents, evaluated_tasks
from harness.spec import Eval


@pytest.fixture(scope="module")
def docs():
    found, include = evaluated_tasks(Eval())
    return dict(found), {(t, i): text for t, i, text in documents([t for t, _ in found], include)}


def planted_jsonl(path, docs) -> tuple[dict, dict]:
    """40 skills-pool rows, then three planted evaluation documents: an arithmetic item verbatim, a world_mc
    statement inside a longer answer, and 20 words of a held-out prose passage."""
    texts = docs[1]
    rows = [{"id": r["id"], "prompt": r["prompt"], "response": r["response"]}
            for r in world.generate_pool(40, seed=3)]
    arith_q, arith_a = texts[("skills_arith", 5)].split("\n")
    mc = texts[("world_mc", 7)].replace("\n", " ")
    prose = " ".join(texts[("prose_bpb", 2)].split()[40:60])
    planted = {"p-arith": ("skills_arith", 5), "p-mc": ("world_mc", 7), "p-prose": ("prose_bpb", 2)}
    rows[10:10] = [{"id": "p-arith", "prompt": arith_q, "response": arith_a}]
    rows[20:20] = [{"id": "p-mc", "prompt": "Tell me something about the world.",
                    "response": f"Here is a fact I know. {mc}. I hope that helps you today."}]
    rows[30:30] = [{"id": "p-prose", "prompt": "Quote the docs.", "response": f"They say: {prose}"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {r["id"]: r for r in rows}, planted


def test_audit_counts_planted_documents(tmp_path, docs):
    rows, planted = planted_jsonl(tmp_path / "mine.jsonl", docs)
    groups = docs[0]
    res = {a["task"]: a for a in contamination.audit(list(rows.values()), contamination.Index(
        [(t, i, x) for (t, i), x in docs[1].items()]), groups)}
    assert set(res) == set(groups)
    expected = {task: 1 for task, _ in planted.values()}
    assert {t: a["overlapping_rows"] for t, a in res.items()} == {t: expected.get(t, 0) for t in groups}
    for ex_id, (task, doc) in planted.items():
        assert res[task]["examples"] == [[ex_id, doc]] and res[task]["overlapping_docs"] == 1
    assert res["world_mc"]["eval_docs"] == 80 and res["world_mc"]["train_rows"] == 43


def test_decontaminate_drops_exactly_the_planted_rows(tmp_path, docs):
    rows, planted = planted_jsonl(tmp_path / "mine.jsonl", docs)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"source: {tmp_path / 'mine.jsonl'}\nsteps: [{{decontaminate: {{against: eval, n: 13}}}}]\n")
    recipes, arm = load_recipe(recipe)
    folder = build.build(recipes, tmp_path / "results", [arm], log=lambda *a: None)[arm]
    kept = [json.loads(x)["id"] for x in (folder / "data.jsonl").read_text().splitlines()]
    assert kept == [i for i in rows if i not in planted]
    dec = pd.read_parquet(folder / "decisions.parquet")
    assert sorted(dec["example_id"]) == sorted(planted)
    for ex_id, reason in zip(dec["example_id"], dec["reason"]):
        task, doc = planted[ex_id]
        assert reason.startswith(f"overlaps {task} document {doc} (word 13-grams)"), reason
    # the evaluation set is part of the data set's id: other tasks, another data set
    other = recipe.with_name("other.yaml")
    other.write_text(recipe.read_text().replace("against: eval", "against: [skills_arith]"))
    again, arm2 = load_recipe(other)
    assert again[arm2].id != recipes[arm].id


def test_minhash_decontamination_finds_copies_not_documents_inside_long_rows(docs):
    statement, answer = docs[1][("world_mc", 17)].split("\n")
    rows = [{"id": "copy", "prompt": statement.upper() + "...", "response": answer + "!"},  # the same, reformatted
            {"id": "inside", "prompt": "Tell me a story.", "response": "Long ago and far away, " * 10
             + docs[1][("world_mc", 17)]}]
    index = contamination.Index([(t, i, x) for (t, i), x in docs[1].items()], method="minhash")
    hits = index.search([r["prompt"] + "\n" + r["response"] for r in rows])
    found = [index.docs[d][:2] for d in hits[0]]  # and the statements of the same template, as alike as that
    assert ("world_mc", 17) in found and {t for t, _ in found} == {"world_mc"} and hits[1] == []


def test_contamination_table_and_the_check_gate(tmp_path):
    db = tmp_path / "h.duckdb"
    rows = [{"arm": "bulk", "dataset_id": "d1", "task": "skills_arith", "task_group": "learn", "method": "ngram",
             "n": 13, "train_rows": 100, "eval_docs": 32, "overlapping_rows": 3, "overlapping_docs": 2,
             "examples": [["r1", 5]]}]
    with store.writer(db) as con:
        assert con.execute("SELECT name FROM schema_migrations WHERE name = 'contamination'").fetchone()
        store.record_contamination(con, "m", rows)
        store.record_contamination(con, "m", rows)  # a rerun replaces the arm's rows
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT arm, task, overlapping_rows, examples FROM contamination").fetchall() == \
        [("bulk", "skills_arith", 3, "[[\"r1\", 5]]")]
    con.close()


def test_every_matrix_run_audits_its_arms(ci_run):
    """The CI matrix's run wrote one audit row per arm x evaluated task (its skills pool holds no test item)."""
    results, output = ci_run
    con = duckdb.connect(str(results / "harness.duckdb"), read_only=True)
    rows = con.execute("SELECT arm, task, overlapping_rows, train_rows FROM contamination WHERE matrix = 'ci'").fetchall()
    arms = {a for (a,) in con.execute("SELECT DISTINCT arm FROM runs WHERE kind = 'sft'").fetchall()}
    tasks = {t for (t,) in con.execute("SELECT DISTINCT task FROM evals").fetchall()}
    con.close()
    assert {(a, t) for a, t, _, _ in rows} == {(a, t) for a in arms for t in tasks}
    assert all(n == 0 and size > 0 for _, _, n, size in rows) and "contamination:" not in output
    html = (results / "ci.html").read_text()  # the report shows the audit under the data cards
    assert 'id="contamination"' in html and html.count("<td>0 of ") == 2 * len(rows)  # rows and documents


def test_decontaminate_step_is_checked_before_it_runs():
    from harness.data.curate import StepError, parse_step

    assert parse_step("decontaminate") == ("decontaminate", {})
    assert parse_step({"decontaminate": "eval"}) == ("decontaminate", {"against": "eval"})
    for bad, key in (({"method": "exact"}, "method"), ({"n": 0}, "n"), ({"against": "test"}, "against")):
        with pytest.raises(StepError) as e:
            parse_step({"decontaminate": bad})
        assert e.value.path == ("decontaminate", key)
    with pytest.raises(Exception, match="unknown method"):
        contamination.Index([], method="exact")
    assert Context  # the step runs as every other: (rows, params, ctx)
