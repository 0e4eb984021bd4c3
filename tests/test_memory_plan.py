"""The memory plan (harness.train.cost.memory_estimate, `harness matrix plan`): exact parameter counts from a config
alone, parts that scale as the strategies say, and a refusal that names the cell and the ways out. The estimate's
fidelity against measured peaks is bench/sharded_memory.py's job (a measurement, not a test)."""

import pytest
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from harness.cli import app
from harness.train.cost import Arch, lora_params, memory_estimate
from harness.train.recipe import prepare_method

LORA = {"kind": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
TRAIN = {"devices": 1, "strategy": "ddp", "batch_size": 16, "grad_accum": 1, "max_length": 256,
         "gradient_checkpointing": False, "attention": "auto"}
LLAMA_8B = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)


@pytest.mark.parametrize("tied,kv_heads", [(True, 4), (False, 2)])
def test_counts_from_the_config_are_the_models(tied, kv_heads):
    cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=kv_heads, tie_word_embeddings=tied)
    arch = Arch.from_config(cfg)
    assert arch.params == sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
    lora = prepare_method(LlamaForCausalLM(cfg), LORA, seed=0)
    assert lora_params(arch, LORA)[0] == sum(p.numel() for p in lora.parameters() if p.requires_grad)
    only_q = LORA | {"target_modules": ["q_proj"]}
    assert lora_params(arch, only_q)[0] == 3 * 8 * (64 + 64)


def test_llama_8b_shape():
    assert Arch.from_config(LLAMA_8B).params == 8_030_261_248  # Llama-3-8B's published count


def test_parts_scale_as_the_strategies_say():
    arch = Arch.from_config(LLAMA_8B)
    full = {"kind": "full"}
    one = memory_estimate(arch, full, TRAIN, "cuda", bf16=True)
    ddp8 = memory_estimate(arch, full, TRAIN | {"devices": 8}, "cuda", bf16=True)
    fsdp8 = memory_estimate(arch, full, TRAIN | {"devices": 8, "strategy": "fsdp"}, "cuda", bf16=True)
    assert (one.gradients, one.optimizer) == (4 * arch.params, 8 * arch.params)  # fp32 gradients, two moments
    assert (ddp8.weights, ddp8.optimizer) == (one.weights, one.optimizer)  # ddp replicates
    assert ddp8.activations == pytest.approx(one.activations / 8, rel=1e-6)  # a device's share of the batch
    assert fsdp8.optimizer == one.optimizer // 8  # sharded: 1/N
    assert one.gradients / 8 < fsdp8.gradients < one.gradients / 4  # + unsharded ones before their reduce-scatter
    assert fsdp8.weights < one.weights / 4  # 1/N + what is gathered at once (root, two layers, in bf16)
    lora = memory_estimate(arch, LORA, TRAIN, "cuda", bf16=True)
    assert lora.optimizer < one.optimizer / 100 and lora.weights < one.weights / 2  # frozen linears in bf16
    ckpt = memory_estimate(arch, full, TRAIN | {"gradient_checkpointing": True}, "cuda", bf16=True)
    accum = memory_estimate(arch, full, TRAIN | {"grad_accum": 4}, "cuda", bf16=True)
    assert ckpt.activations < one.activations / 2 and accum.activations == pytest.approx(one.activations / 4)
    assert ckpt.weights == one.weights and accum.optimizer == one.optimizer


def _matrix(tmp_path, train: str):
    m = tmp_path / "m.yaml"
    m.write_text("name: mem\nmodels: [micro]\nmethods: {full: {}, lora: {kind: lora, r: 4, alpha: 8}}\n"
                 f"sources: {{pool: {{size: 60}}}}\narms: {{bulk: {{source: pool}}}}\nbudget: {{steps: 3}}\n"
                 f"train: {train}\n")
    return m


def test_plan_prints_the_memory_of_every_cell(tmp_path):
    res = CliRunner().invoke(app, ["matrix", "plan", str(_matrix(tmp_path, "{batch_size: 8, devices: 2, strategy: "
                                                                           "fsdp}")), "--device-memory-gb", "80"])
    assert res.exit_code == 0, res.output
    assert "memory plan" in res.output and "run.device_memory_gb 80" in res.output
    assert res.output.count("fsdp x 2") == 2 and "4 x 256" in res.output  # both cells; micro-batch 8 / 2 devices


def test_plan_refuses_a_cell_that_cannot_fit_in_one_line(tmp_path):
    res = CliRunner().invoke(app, ["matrix", "plan", str(_matrix(tmp_path, "{batch_size: 8}")),
                                   "--device-memory-gb", "0.5"])
    assert res.exit_code == 2
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("error: cell ") and "(micro full/bulk/s0)" in line
    for way in ("train.devices: 2", "train.strategy: fsdp", "a LoRA method", "train.gradient_checkpointing: true",
                "train.grad_accum: 2", "1 more cell(s)"):
        assert way in line, way


def test_plan_reads_a_config_without_weights(tmp_path):
    """A model folder that holds only config.json plans (no weights read): how a user plans an 8B model."""
    from harness.models import ModelRef
    from harness.run.plan import model_arch

    LLAMA_8B.save_pretrained(tmp_path)
    ref = ModelRef(str(tmp_path), "local", "fp", "8B-shaped", path=str(tmp_path))
    assert model_arch(ref).params == 8_030_261_248
    assert AutoConfig.from_pretrained(tmp_path).num_key_value_heads == 8


def test_run_refuses_before_anything_runs(tmp_path):
    matrix = _matrix(tmp_path, "{batch_size: 8}")
    matrix.write_text(matrix.read_text() + "run: {device_memory_gb: 0.5}\n")
    res = CliRunner().invoke(app, ["matrix", "run", str(matrix), "--results", str(tmp_path / "results")])
    assert res.exit_code == 2 and "ways out" in res.output
    assert not (tmp_path / "results").exists()  # no data built, no model, no database


def test_the_ram_executors_ask_for():
    """Slurm's --mem and Ray's memory resource: the worker's copy of the model and each of a sharded cell's
    processes loading it whole (4 bytes a parameter + 0.4 GiB runtime each), + 0.5 GiB for evaluation."""
    from harness.run.plan import host_memory_bytes
    from harness.train.cost import GIB, RUNTIME_BYTES

    loaded = 4 * 32_928 + RUNTIME_BYTES["cpu"]  # the micro base: 32,928 parameters
    cell = {"model": "micro", "method_cfg": {"kind": "full"},
            "train": TRAIN | {"devices": 4, "strategy": "fsdp", "precision": "fp32"}}
    assert host_memory_bytes(cell, gpus=True) == 5 * loaded + GIB // 2
    assert host_memory_bytes({"model": "micro", "precision": "auto"}, gpus=True) == loaded + GIB // 2  # a base eval
    one = cell | {"train": cell["train"] | {"devices": 1}}
    assert host_memory_bytes(one, gpus=False) == memory_estimate(Arch(384, 32, 2, 2, 32, 64, True), {"kind": "full"},
                                                                 one["train"], "cpu", False).total + GIB // 2
