import json

import pytest

from harness.eval.tasks import TASKS_DIR, evaluate, task_config, write_task_data


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
