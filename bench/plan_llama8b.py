"""The memory plan of `harness matrix plan` for a Llama-3-8B-shaped model on 1 and on 8 GPUs of 80 GB: config only,
no weights (none are read, and none exist here).

    python bench/plan_llama8b.py [--device-memory-gb 80] [--batch 16] [--max-length 2048]

A transformers LlamaConfig with Llama-3-8B's shape (vocab 128,256, hidden 4,096, 32 layers, 32 heads with 8 KV heads,
MLP 14,336, untied head: 8.03B parameters) is saved as a config.json folder; the plan's cells are the full-FT and LoRA
(r 16, all linear layers) cells of a matrix over it, and each setting below is printed by the same table and refusal
line as `harness matrix plan` (harness/cli/matrix.py). bf16 autocast on GPUs (precision auto).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import typer

SETTINGS = [  # (devices, strategy, gradient checkpointing, grad_accum)
    (1, "ddp", False, 1), (1, "ddp", True, 16), (8, "ddp", True, 1), (8, "fsdp", False, 1), (8, "fsdp", True, 1)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device-memory-gb", type=float, default=80)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=2048)
    args = p.parse_args()
    from transformers import LlamaConfig

    from harness.cli.matrix import _memory_plan
    from harness.models import ModelRef
    from harness.run.plan import Plan
    from harness.spec import Matrix, Method, Train, expand

    folder = Path(tempfile.mkdtemp(prefix="llama3-8b-shape-"))
    LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False).save_pretrained(folder)
    ref = ModelRef(str(folder), "local", "llama3-8b-shape", "config only", path=str(folder))
    for devices, strategy, checkpointing, accum in SETTINGS:
        train = Train(batch_size=args.batch, max_length=args.max_length, devices=devices, strategy=strategy,
                      gradient_checkpointing=checkpointing, grad_accum=accum)
        m = Matrix(name="llama3-8b", models=["llama3-8b"], train=train,
                   methods={"full": Method(), "lora": Method(kind="lora")})
        cells, bases = expand(m, {"llama3-8b": "shape"}, {"bulk": "none"}, "none")
        print(f"\n== {devices} GPU(s), {strategy}, gradient checkpointing {'on' if checkpointing else 'off'}, "
              f"grad_accum {accum} ==", flush=True)
        try:
            _memory_plan(Plan(dataclasses.replace(m), cells, bases, {}, {"llama3-8b": ref}), args.device_memory_gb)
        except typer.Exit:  # a refusal: its one line is already printed
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
