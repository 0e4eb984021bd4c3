"""The lm-eval tasks (harness.eval.tasks): the project's own, scored on micro with per-sample rows, and tasks from
anywhere (a user's own task folder, task YAML paths) with their place in cell ids."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.eval.tasks import TASKS_DIR, evaluate, task_config, write_task_data
from harness.run.plan import plan
from harness.spec import SpecError, load_matrix

TEMPLATE = """\
# shared by the user's tasks
dataset_path: json
test_split: test
output_type: generate_until
doc_to_text: "{{q}}"
doc_to_target: "{{a}}"
generation_kwargs: {until: ["\\n"], max_gen_toks: 4, do_sample: false}
metric_list:
  - {metric: exact_match, aggregation: mean, higher_is_better: true}
"""
TASK = """\
include: ../_shared_yaml
task: my_add
dataset_kwargs:
  data_files: {test: data/add.jsonl}
"""
MATRIX = """\
name: foreign
models: [micro]
methods: {full: {}}
arms: {bulk: {source: pool}}
sources: {pool: {size: 40}}
budget: {steps: 2}
train: {batch_size: 4}
eval: {learn: [my_add, skills_arith], forget: [world_mc], limit: 4%s}
"""


def write_tasks(root: Path, rows: int = 6) -> Path:
    """A task folder as a user writes one: a template in the parent folder, data relative to the task YAML."""
    (root / "mine" / "data").mkdir(parents=True)
    (root / "_shared_yaml").write_text(TEMPLATE)
    (root / "mine" / "my_add.yaml").write_text(TASK)
    (root / "mine" / "data" / "add.jsonl").write_text(
        "".join(json.dumps({"q": f"{i} + 1 =", "a": str(i + 1)}) + "\n" for i in range(rows)))
    return root / "mine"


def cell_ids(matrix: Path) -> list[str]:
    p = plan(load_matrix(matrix))
    return [b.id for b in p.bases] + [c.id for c in p.cells]


def test_included_task_folder_and_yaml_path_give_the_same_cells(tmp_path):
    folder = write_tasks(tmp_path / "a")
    by_include = tmp_path / "a" / "m.yaml"
    by_include.write_text(MATRIX % ", include: [mine]")
    by_path = tmp_path / "a" / "p.yaml"
    by_path.write_text((MATRIX % "").replace("[my_add,", "[mine/my_add.yaml,"))
    ids = cell_ids(by_include)
    assert cell_ids(by_path) == ids
    p = plan(load_matrix(by_path))
    assert p.matrix.eval.learn == ["my_add", "skills_arith"] and p.matrix.eval.include == [str(folder)]
    # the same tasks elsewhere: the same ids (where a task lives is not its content)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert cell_ids(tmp_path / "b" / "m.yaml") == ids
    # changed data: new ids
    with (tmp_path / "b" / "mine" / "data" / "add.jsonl").open("a") as f:
        f.write(json.dumps({"q": "9 + 1 =", "a": "10"}) + "\n")
    assert set(cell_ids(tmp_path / "b" / "m.yaml")).isdisjoint(ids)
    # a changed shared template: new ids too
    (tmp_path / "a" / "_shared_yaml").write_text(TEMPLATE.replace("max_gen_toks: 4", "max_gen_toks: 5"))
    assert set(cell_ids(by_include)).isdisjoint(ids)


def test_a_matrix_without_include_keeps_its_ids(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text((MATRIX % "").replace("my_add, ", ""))
    empty = tmp_path / "empty.yaml"
    empty.write_text((MATRIX % ", include: []").replace("my_add, ", ""))
    assert cell_ids(plain) == cell_ids(empty)


@pytest.mark.parametrize("edit, message", [
    pytest.param(lambda root: None, r"unknown task 'my_add'; expected a task YAML path, a task in",
                 marks=pytest.mark.slow),  # looking through lm-eval's registry takes ~6-30 s
    (lambda root: (root / "mine" / "data" / "add.jsonl").unlink(), r"data file .*add\.jsonl: No such file"),
])
def test_missing_task_or_data_fails_at_plan_time(tmp_path, edit, message):
    write_tasks(tmp_path)
    edit(tmp_path)
    matrix = tmp_path / "m.yaml"
    matrix.write_text(MATRIX % (", include: [mine]" if "data" in message else ""))
    with pytest.raises(SpecError, match=message):
        plan(load_matrix(matrix))


@pytest.mark.slow
def test_harness_eval_scores_a_foreign_task_by_path_and_by_include(tmp_path, micro_base):
    folder = write_tasks(tmp_path)
    runner = CliRunner()
    common = ["--forget", "", "--limit", "4", "--results", str(tmp_path / "results")]
    by_path = runner.invoke(app, ["eval", str(micro_base), "--tasks", str(folder / "my_add.yaml"), *common])
    assert by_path.exit_code == 0, by_path.output
    assert "my_add" in by_path.output and "exact_match" in by_path.output
    by_include = runner.invoke(app, ["eval", str(micro_base), "--tasks", "my_add", "--include", str(folder), *common])
    assert by_include.exit_code == 0, by_include.output
    run_id = by_path.output.split("(run ")[1].split(")")[0]
    assert f"(run {run_id})" in by_include.output  # the same evaluation: the same run
    unknown = runner.invoke(app, ["eval", str(micro_base), "--tasks", "my_add", *common])
    assert unknown.exit_code == 2 and "--tasks: unknown task 'my_add'" in unknown.output


def test_a_bad_data_row_stops_matrix_plan_before_any_model_is_built(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "mine.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n{"prompt": "e"}\n')
    matrix = tmp_path / "m.yaml"
    matrix.write_text((MATRIX % "").replace("my_add, ", "").replace("models: [micro]", "models: [tiny]")
                      .replace("{bulk: {source: pool}}", "{mine: {source: mine.jsonl}}"))
    for command in ("plan", "run"):
        res = CliRunner().invoke(app, ["matrix", command, str(matrix), "--results", str(tmp_path / "r")])
        assert res.exit_code == 2 and f"{data}:3:" in res.output, res.output
    assert not (tmp_path / "cache" / "bases").exists() or not any((tmp_path / "cache" / "bases").iterdir())
    assert not (tmp_path / "r").exists()  # nothing written


def test_which_tasks_plain_lm_eval_reads_relative_to_the_working_directory(tmp_path):
    from harness.eval.tasks import reads_data_from_cwd

    folder = write_tasks(tmp_path)
    assert reads_data_from_cwd(folder / "my_add.yaml")  # `harness show` prints `cd` to its folder first
    assert not reads_data_from_cwd(TASKS_DIR / "skills_arith.yaml")  # its loader resolves data_files itself


# ---------------------------------------------------------------------------------------------------------------
# The project's own tasks


@pytest.mark.slow
def test_lm_eval_scores_a_tiny_model_on_project_tasks(micro_model):
    model, tok = micro_model
    res = evaluate(model, tok, learn=["skills_arith"], forget=["world_mc", "prose_bpb"], limit=5, batch_size=8)
    metrics = {(m["task"], m["metric"]): m for m in res.metrics}
    assert metrics[("skills_arith", "exact_match")]["is_primary"]
    assert metrics[("skills_arith", "exact_match")]["task_group"] == "learn"
    assert 0.0 <= metrics[("world_mc", "acc")]["value"] <= 1.0 and metrics[("world_mc", "acc")]["n"] == 5
    bpb = metrics[("prose_bpb", "bits_per_byte")]
    assert bpb["is_primary"] and not bpb["higher_is_better"] and 0.5 < bpb["value"] < 20
    samples = [s for s in res.samples if s["task"] == "skills_arith"]
    assert len(samples) == 5
    first = samples[0]
    assert first["prompt"].startswith("### Instruction:\n") and first["prompt"].endswith("### Response:\n")
    assert json.loads(first["metrics"])["exact_match"] == first["score"]
    mc = [s for s in res.samples if s["task"] == "world_mc"][0]
    doc = json.loads((TASKS_DIR / "data" / "world_mc.jsonl").read_text().splitlines()[mc["doc_id"]])
    assert mc["target"] == doc["choices"][doc["label"]] and mc["response"] in doc["choices"]
    # per-sample bits per byte average to the task's value (lm-eval weights by bytes, so compare loosely)
    per_doc = [s["score"] for s in res.samples if s["task"] == "prose_bpb"]
    assert min(per_doc) <= bpb["value"] <= max(per_doc)
    assert res.attention == "sdpa" == model.config._attn_implementation  # loaded eager, scored with SDPA


def test_a_model_without_sdpa_is_scored_with_the_attention_it_has(micro_model, monkeypatch):
    model, tok = micro_model
    model.set_attn_implementation("eager")

    def no_sdpa(implementation):  # what transformers raises for an architecture without SDPA
        raise ValueError(f"{type(model).__name__} does not support an attention implementation through sdpa")

    monkeypatch.setattr(model, "set_attn_implementation", no_sdpa)
    res = evaluate(model, tok, learn=["skills_arith"], forget=[], limit=2)
    assert res.attention == "eager" and len(res.samples) == 2


@pytest.mark.slow
def test_task_data_is_regenerated_identically(tmp_path):
    """tasks/data is committed; regenerating it from the skills world must give the same bytes."""
    (tmp_path / "data").mkdir()
    for path in write_task_data(tmp_path):
        assert path.read_bytes() == (TASKS_DIR / "data" / path.name).read_bytes(), path.name


def test_task_config_resolves_data_files_against_the_yaml_folder():
    cfg = task_config("skills_facts")
    assert cfg["dataset_kwargs"]["data_files"]["test"] == str((TASKS_DIR / "data" / "skills_facts.jsonl").resolve())
    assert cfg["output_type"] == "generate_until"  # from the shared template via include
    assert task_config("hellaswag") == "hellaswag"  # registry names pass through


@pytest.mark.slow  # an unknown name makes lm-eval index all its tasks (~30 s)
def test_unknown_task_is_reported():
    from harness.eval.tasks import check_tasks

    assert check_tasks(["skills_arith", "definitely_not_a_task"]) == ["definitely_not_a_task"]


@pytest.mark.slow
def test_reused_tasks_give_identical_scores(micro_model):
    """Task objects are built once per process; a second evaluation must not be affected by the first."""
    model, tok = micro_model
    first = evaluate(model, tok, learn=["skills_facts"], forget=["world_mc"], limit=4)
    again = evaluate(model, tok, learn=["skills_facts"], forget=["world_mc"], limit=4)
    assert first.metrics == again.metrics and first.samples == again.samples
