"""train.strategy fsdp: FSDP2 sharding over gloo processes on a CPU trains as one process does (same global batch,
same loss curve within fp32 reordering), for full fine-tuning and LoRA, with and without gradient checkpointing."""

import copy

import pytest
import torch
from typer.testing import CliRunner

from harness.cli import app

from harness.run.cell import train_cell
from tests.test_ddp import _cell, matrix_on_two_processes

LORA = {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}


def _fsdp(results, devices, method, checkpointing=False, grad_accum=1):
    cfg = _cell(results, devices, grad_accum, steps=6)
    cfg["train"] |= {"strategy": "fsdp", "gradient_checkpointing": checkpointing}
    return cfg | {"method_cfg": method}


@pytest.mark.slow
@pytest.mark.parametrize("devices,method,checkpointing,grad_accum", [
    (2, {"kind": "full"}, False, 1), (4, {"kind": "full"}, False, 1), (2, LORA, False, 1), (4, LORA, False, 1),
    (2, {"kind": "full"}, True, 2), (2, LORA, True, 1)])
def test_sharded_processes_train_as_one(results, micro_model, devices, method, checkpointing, grad_accum):
    """A real torchrun of `devices` gloo processes under FSDP2 against one process, same global batch of 8 (a step
    with one example leaves processes empty), 6 fp32 steps: the same loss curve and the same trained weights, gathered
    from the shards into the worker's model."""
    model, tok = micro_model
    one, ref, _ = train_cell(copy.deepcopy(model), tok, _fsdp(results, 1, method), 1e-2, "cpu", None,
                             lambda r, t: None)
    seen = []
    many, curve, counts = train_cell(copy.deepcopy(model), tok, _fsdp(results, devices, method, checkpointing,
                                                                      grad_accum),
                                     1e-2, "cpu", None, lambda r, t: seen.append(r.step))
    a, b = [r.loss for r in ref], [r.loss for r in curve]
    diff = max(abs(x - y) for x, y in zip(a, b))
    print(f"\n{method['kind']} 1 process: {[round(x, 6) for x in a]}\n{devices} fsdp processes "
          f"(checkpointing {checkpointing}, grad_accum {grad_accum}): {[round(x, 6) for x in b]}\nmax |diff| {diff:.2e}")
    assert len(a) == len(b) == 6 and diff < 1e-4
    assert [r.tokens for r in ref] == [r.tokens for r in curve]
    assert seen == list(range(6)) and counts["trainable_params"] == sum(
        p.numel() for p in one.parameters() if p.requires_grad)  # counted before sharding, not a shard's
    trained = [(n, p) for n, p in one.named_parameters() if p.requires_grad]
    other = dict(many.named_parameters())
    for name, p in trained:
        assert torch.allclose(p, other[name], atol=1e-4), name
    assert any(not torch.allclose(p, q) for (_, p), q in zip(trained, model.parameters()) if p.shape == q.shape) \
        or method["kind"] == "lora"
    assert not list((results / "runs").glob(".ddp.tmp-*"))


@pytest.mark.slow
def test_a_killed_sharded_cell_leaves_no_folder_and_its_rerun_trains_it_again(tmp_path, micro_base):
    """`harness matrix run` of an fsdp cell on 2 gloo processes, killed (SIGKILL to the driver, its worker, torchrun
    and the ranks) while the ranks train: no folder of the cell is in place, only the swept `.*.tmp-*` ones; the rerun
    trains the cell from its first step (no mid-cell checkpoint) and records every step once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import duckdb

    results, matrix = matrix_on_two_processes(tmp_path, micro_base, "full: {}", 400, "strategy: fsdp")
    cmd = [sys.executable, "-m", "harness.cli", "matrix", "run", str(matrix), "--results", str(results)]
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list((results / "runs").glob(".ddp.tmp-*/job.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(15)  # the ranks start (imports, rendezvous, load) and train
        assert proc.poll() is None, "the cell finished before it could be killed: give it more steps"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    cells = [d.name for d in (results / "runs").iterdir() if not d.name.startswith(".")]
    assert all((results / "runs" / c / "result.json").exists() for c in cells)  # only the base's, complete
    assert list((results / "runs").glob(".*.tmp-*"))  # what the kill left behind
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    db = duckdb.connect(str(results / "harness.duckdb"), read_only=True)
    (status, weights), = db.execute("select status, weights_path from runs where kind = 'sft'").fetchall()
    steps = db.execute("select min(step), max(step), count(*) from train_steps").fetchone()
    assert status == "ok" and steps == (0, 399, 400)
    from transformers import AutoModelForCausalLM  # the consolidated model, as transformers loads it

    trained = AutoModelForCausalLM.from_pretrained(weights)
    base = AutoModelForCausalLM.from_pretrained(micro_base)
    assert sum(p.numel() for p in trained.parameters()) == sum(p.numel() for p in base.parameters())
    assert not torch.equal(trained.model.norm.weight, base.model.norm.weight)  # trained, gathered from the shards
    assert not list((results / "runs").glob(".*.tmp-*"))


@pytest.mark.slow
def test_a_sharded_cell_through_ray_trains_as_through_the_local_executor(tmp_path, micro_base):
    """One fsdp cell on 2 gloo processes through the Ray executor (a local Ray instance the run starts; the actor
    reserves the cell's CPUs and the memory plan's RAM together) and through the local executor: both finish, with
    the same loss curve."""
    pytest.importorskip("ray")
    import duckdb

    curves = {}
    for executor in ("local", "ray"):
        results, matrix = matrix_on_two_processes(tmp_path / executor, micro_base, "full: {}", 6, "strategy: fsdp")
        # ray: a Ray instance of its own ("local"), never one another process on this machine started
        res = CliRunner().invoke(app, ["matrix", "run", str(matrix), "--executor", executor, "--results",
                                       str(results)] + (["--address", "local"] if executor == "ray" else []))
        print(res.output)
        assert res.exit_code == 0, res.output
        db = duckdb.connect(str(results / "harness.duckdb"), read_only=True)
        assert db.execute("select status, config->>'$.train.strategy' from runs where kind = 'sft'").fetchall() \
            == [("ok", "fsdp")]
        curves[executor] = [r[0] for r in db.execute("select loss from train_steps order by step").fetchall()]
    assert len(curves["ray"]) == 6 and max(abs(a - b) for a, b in zip(curves["local"], curves["ray"])) < 1e-4
