"""Gradient accumulation and data-parallel training (train.grad_accum, train.devices): the same loss and gradient as
one batch of the global size."""

import copy
import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from harness.data import world
from harness.cli import app
from harness.train.sft import batch_order, collate, encode_example, optimize, step_batches
from harness.run.cell import train_cell
from harness.spec.matrix import Train


def _examples(tokenizer, n):
    rows = world.generate_pool(size=n, seed=3, defects={k: 0.0 for k in world.DEFAULT_DEFECTS})
    return [encode_example(tokenizer, r["prompt"], r["response"], 64) for r in rows], rows


def _train(model, steps):
    torch.manual_seed(0)
    model = copy.deepcopy(model)
    return model, [r.loss for r in optimize(model, steps, 6, lr=1e-2, precision="fp32", sync_every=4)]


@pytest.mark.slow
@pytest.mark.parametrize("grad_accum,packing", [(2, False), (4, False), (2, True)])
def test_grad_accum_trains_as_one_batch(micro_model, grad_accum, packing):
    """6 fp32 steps of batch 16 cut into `grad_accum` micro-batches: the loss curve and the weights of one batch of 16
    (the micro-batches differ in response tokens, so a mean of micro-batch means would not match)."""
    model, tok = micro_model
    examples, _ = _examples(tok, 40)
    order = batch_order([len(e.input_ids) for e in examples], 16, seed=0, steps=6)
    one, ref = _train(model, (collate([examples[i] for i in idx], tok.pad_token_id) for idx in order))
    steps = list(step_batches(examples, order, tok.pad_token_id, packing, 256, grad_accum))
    assert all(len(s) == grad_accum for s in steps)
    split, curve = _train(model, iter(steps))
    print(f"grad_accum={grad_accum} packing={packing}: one batch {ref}\n  accumulated {curve}")
    # fp32 sums in another order differ by ~1e-7 and six steps at lr 1e-2 grow that to up to 4e-5 (AVX2 CPU); a mean
    # of micro-batch means is off by 0.63 by step 4
    assert max(abs(a - b) for a, b in zip(ref, curve)) < 1e-4
    for (name, a), b in zip(one.named_parameters(), split.parameters()):
        assert torch.allclose(a, b, atol=1e-4), name


def test_step_batches_split_the_global_batch_between_ranks_and_micro_batches(micro_model):
    _, tok = micro_model
    examples, _ = _examples(tok, 12)
    order = [[0, 1, 2, 3, 4, 5, 6, 7], [8]]  # a short last batch: one example for two ranks
    ranks = [list(step_batches(examples, order, tok.pad_token_id, grad_accum=2, rank=r, world=2)) for r in (0, 1)]
    for s, idx in enumerate(order):
        sizes = [[b.input_ids.shape[0] for b in ranks[r][s]] for r in (0, 1)]
        labels = sum(b.n_label_tokens for r in (0, 1) for b in ranks[r][s])
        assert labels == collate([examples[i] for i in idx], tok.pad_token_id).n_label_tokens
        if s == 0:
            assert sizes == [[2, 2], [2, 2]]  # rank r takes examples r, r+2, ...; two micro-batches each
            first = ranks[1][0][0].input_ids[0, :len(examples[1].input_ids)]
            assert first.tolist() == examples[1].input_ids
    assert ranks[1][1][0].n_label_tokens == 0 and ranks[1][1][0].n_tokens == 0  # rank 1 still takes part


def _cell(results, devices: int, grad_accum: int = 1, steps: int = 10) -> dict:
    """A worker's view of one full fine-tuning cell of the micro base, on a small data set in `results`: 41 rows in
    batches of 8, so each epoch ends with a batch of 1 (a process with no example in that step)."""
    rows = world.generate_pool(size=41, seed=5, defects={k: 0.0 for k in world.DEFAULT_DEFECTS})
    (results / "data" / "d0").mkdir(parents=True, exist_ok=True)
    (results / "data" / "d0" / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = dataclasses.asdict(Train(batch_size=8, max_length=128, precision="fp32", attention="eager",
                                     grad_accum=grad_accum, devices=devices))
    return {"results": results, "model": "micro", "model_fingerprint": "micro", "dataset_id": "d0", "seed": 0,
            "budget": {"steps": steps}, "train": train, "method_cfg": {"kind": "full"}}


@pytest.mark.slow
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_two_gloo_processes_train_as_one(results, micro_model, grad_accum):
    """A real torchrun with 2 gloo processes (DDP; each accumulating `grad_accum` micro-batches) against one process,
    same global batch of 8, 10 fp32 steps: the same loss curve (|diff| < 1e-4) and the same trained weights, read back
    into the worker's model."""
    model, tok = micro_model
    assert 1 in map(len, batch_order([1] * 41, 8, seed=0, steps=10))  # a step that leaves one process empty
    seen = []
    one, ref, _ = train_cell(copy.deepcopy(model), tok, _cell(results, 1), 1e-2, "cpu", None, lambda r, t: None)
    two, curve, counts = train_cell(copy.deepcopy(model), tok, _cell(results, 2, grad_accum), 1e-2, "cpu", None,
                                    lambda r, t: seen.append(r.step))
    a, b = [r.loss for r in ref], [r.loss for r in curve]
    diff = max(abs(x - y) for x, y in zip(a, b))
    print(f"\n1 process:   {[round(x, 6) for x in a]}\n2 processes x {grad_accum} micro-batches: "
          f"{[round(x, 6) for x in b]}\nmax |diff| {diff:.2e}")
    assert len(a) == len(b) == 10 and diff < 1e-4
    assert [r.tokens for r in ref] == [r.tokens for r in curve]  # the same global batches
    assert seen == list(range(10)) and counts["steps"] == 10  # progress came through from rank 0
    for (name, p), q in zip(one.named_parameters(), two.parameters()):
        assert torch.allclose(p, q, atol=1e-4), name
    assert not list((results / "runs").glob(".ddp.tmp-*"))  # the exchange folder is gone


@pytest.mark.slow
def test_a_failing_rank_fails_the_cell_and_leaves_nothing(results, micro_model):
    model, tok = micro_model
    cfg = _cell(results, 2, steps=2) | {"model": "no-such-model"}  # every rank fails to load its model
    with pytest.raises(RuntimeError, match="ddp training on 2 processes failed"):
        train_cell(copy.deepcopy(model), tok, cfg, 1e-2, "cpu", None, lambda r, t: None)
    assert not list((results / "runs").glob(".ddp.tmp-*"))


def matrix_on_two_processes(tmp_path, micro_base, method: str, steps: int, train: str):
    """A results folder with the micro base, and a one-cell matrix of it trained on 2 processes; (results, matrix)."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(micro_base, results / "bases" / micro_base.name)
    matrix = tmp_path / "m.yaml"
    matrix.write_text(f"name: two\nmodels: [micro]\nmethods: {{{method}}}\nsources: {{pool: {{size: 60}}}}\n"
                      f"arms: {{bulk: {{source: pool}}}}\nbudget: {{steps: {steps}}}\n"
                      f"train: {{batch_size: 4, devices: 2, {train}}}\n"
                      "eval: {limit: 4, learn: [skills_arith], forget: [world_mc]}\n")
    return results, matrix


@pytest.mark.slow
def test_a_matrix_cell_on_two_processes(tmp_path, micro_base):
    """`train.devices: 2` through the CLI on a CPU (gloo): the cell finishes and stores its loss curve."""
    import duckdb

    results, matrix = matrix_on_two_processes(tmp_path, micro_base, "lora: {r: 4, alpha: 8}", 3, "grad_accum: 2")
    res = CliRunner().invoke(app, ["matrix", "run", str(matrix), "--results", str(results)])
    assert res.exit_code == 0, res.output
    db = duckdb.connect(str(results / "harness.duckdb"), read_only=True)
    status, hours, wall = db.execute(
        "select status, device_hours, wall_seconds from runs where kind = 'sft'").fetchone()
    assert status == "ok" and hours == pytest.approx(2 * wall / 3600)
    assert db.execute("select count(*) from train_steps").fetchone()[0] == 3


def test_default_devices_and_grad_accum_leave_cell_ids_alone():
    from harness.spec import content_id

    payload = {"train": {"batch_size": 16}, "seed": 0}
    assert content_id(payload) == content_id({**payload, "train": {"batch_size": 16, "grad_accum": 1, "devices": 1}})
    assert content_id(payload) != content_id({**payload, "train": {"batch_size": 16, "grad_accum": 2, "devices": 1}})
