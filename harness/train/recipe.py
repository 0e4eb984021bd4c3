"""The training half of a cell, the same in one process and in each of N: prepare the method (full fine-tuning or
LoRA), order the batches, train. The cell recipe (harness/run/cell.py) loads the model and encodes the data before,
and saves and evaluates after; with train.devices > 1 `fit` hands the training to N processes
(harness/train/distributed.py), each of which runs `fit` again under torch.distributed.
"""

from __future__ import annotations

import time
from typing import Sequence

from harness.train import cost
from harness.train.sft import Encoded, batch_order, optimize, step_batches


def prepare_method(model, method: dict, seed: int, autocast=None):
    """Full fine-tuning trains every weight; LoRA wraps the model with peft adapters (base weights frozen)."""
    import torch

    torch.manual_seed(seed)  # LoRA's A matrices and dropout draw from this
    if method["kind"] == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=method["r"], lora_alpha=method["alpha"], lora_dropout=method["dropout"],
                     target_modules=method["target_modules"], task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    if autocast is not None:
        cast_frozen_linears(model, autocast)
    return model


def cast_frozen_linears(model, dtype) -> None:
    """Store LoRA's frozen base linears in the autocast dtype (and back to float32 before evaluating). Autocast multiplies
    them in bf16 anyway, so no product changes; what goes is their fp32 copy and the bf16 copy autocast keeps for the
    backward pass. On SmolLM2-135M at batch 8 LoRA's peak RSS went from 0.61x to 0.47x of full FT's with this and
    models.load's own copies of the weights (bench/memory.py)."""
    from peft.tuners.lora import LoraLayer

    for m in model.modules():
        if isinstance(m, LoraLayer):
            for p in (m.base_layer.weight, getattr(m.base_layer, "bias", None)):
                if p is not None:
                    p.data = p.data.to(dtype)


def fit(model, pad_id: int, cfg: dict, encoded: Sequence[Encoded], lr: float, device: str, autocast,
        on_step) -> tuple[object, list, dict]:
    """Fine-tune per the cell's method, budget and schedule (`cfg`: a cell's config) on its encoded examples;
    returns the model, its loss curve and counts. With train.devices > 1 the training runs in that many processes."""
    import torch.distributed as dist

    tr = cfg["train"]
    if tr["devices"] > 1 and not dist.is_initialized():
        from harness.train import distributed

        return distributed.train(model, pad_id, cfg, encoded, lr, device, autocast, on_step)
    t0 = time.perf_counter()
    if tr["gradient_checkpointing"]:  # non-reentrant: also right for LoRA, whose inputs need no grad
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = prepare_method(model, cfg["method_cfg"], cfg["seed"], autocast)
    lengths = [len(e.input_ids) for e in encoded]
    order = batch_order(lengths, tr["batch_size"], cfg["seed"], **cfg["budget"])
    out = {"examples": len(encoded), "steps": len(order), "epochs": sum(map(len, order)) / len(encoded),
           "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
           "prep_seconds": time.perf_counter() - t0}
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    batches = step_batches(encoded, order, pad_id, tr["packing"], tr["max_length"], tr["grad_accum"], rank, world)
    shape = cost.model_shape(model)  # before sharding: fsdp leaves each process a slice of every weight
    t1 = time.perf_counter()
    curve = optimize(model, batches, total_steps=len(order), lr=lr, schedule=tr["schedule"], warmup=tr["warmup"],
                     weight_decay=tr["weight_decay"], grad_clip=tr["grad_clip"], precision=tr["precision"],
                     device=device, on_step=on_step, strategy=tr.get("strategy", "ddp"))
    out["train_seconds"] = time.perf_counter() - t1
    out["train_tokens"] = sum(r.tokens for r in curve)
    out["response_tokens"] = sum(r.label_tokens for r in curve)
    out["tokens_per_second"] = out["train_tokens"] / out["train_seconds"]
    sequences = sum(map(len, order))
    out["train_flops"] = cost.train_flops(shape, out["train_tokens"], out["response_tokens"],
                                          out["train_tokens"] / sequences)
    return model, curve, out
