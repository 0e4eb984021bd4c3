"""Peak memory and training speed of LoRA vs full fine-tuning at the same batch (default: SmolLM2-135M).

    python bench/memory.py [--model smollm2-135m] [--batch 8] [--steps 12] [--max-length 128] [--results results]
                           [--gradient-checkpointing]

Each method runs in a fresh subprocess, so neither can hide inside the other's high-water mark. The child loads the
model as a matrix cell does (models.load), prepares the method with the cell's own code (recipe.prepare_method; LoRA
r 16, alpha 32, all linear layers) and trains with the harness's loop (train.optimize, bf16 autocast where the CPU has
it) on skills-pool examples rendered with the model's chat template, in the same batches for both methods.

Memory on a CPU is the child's peak resident set size while it trains (VmHWM, reset to the current RSS after loading:
loading has its own transient peak, the same for both methods, reported as "load peak"): everything the process
touched, weights included, so it is what a machine must have. "train adds" is that peak minus the RSS after loading:
what training itself costs (full FT: gradients + two AdamW moments = 3 x 4 bytes per parameter, plus activations;
LoRA: activations and the adapters' small share). On a GPU the numbers are torch.cuda.max_memory_allocated.
Train tokens/s counts non-pad tokens over the steps after the first two (allocator growth and first-call costs).
The target of issue #3 is LoRA peak <= 0.6 x full FT peak; the exit code is 1 when it is not met.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TARGET = 0.6
WARMUP_STEPS = 2


def _status_bytes(field: str) -> int:
    """VmRSS (resident now) or VmHWM (the peak since start or since the last reset) from /proc, in bytes."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024  # reported in kB


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


def child(args) -> dict:
    import dataclasses

    import torch

    from harness import models
    from harness.data import world
    from harness.spec import Method
    from harness.train.sft import attention_for, autocast_dtype, batch_order, collate, encode_example, optimize
    from harness.train.recipe import prepare_method

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(os.cpu_count() or 1)
    model, tok = models.load(models.resolve(args.model), Path(args.results), device, attention_for("auto", device))
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    load_peak = torch.cuda.max_memory_allocated() if device == "cuda" else _status_bytes("VmHWM")
    loaded = torch.cuda.memory_allocated() if device == "cuda" else _status_bytes("VmRSS")
    # the peak of training alone: loading has its own (transient) peak, the same for both methods
    torch.cuda.reset_peak_memory_stats() if device == "cuda" else _reset_peak()
    model = prepare_method(model, dataclasses.asdict(Method(kind=args.child)), seed=0,
                           autocast=autocast_dtype("auto", device))
    rows = world.generate_pool(size=args.batch * args.steps * 4, seed=0)
    encoded = [encode_example(tok, r["prompt"], r["response"], args.max_length) for r in rows]
    order = batch_order([len(e.input_ids) for e in encoded], args.batch, seed=0, steps=args.steps)
    lr = 2e-4 if args.child == "lora" else 2e-5
    curve = optimize(model, (collate([encoded[i] for i in idx], tok.pad_token_id) for idx in order),
                     total_steps=len(order), lr=lr, device=device)
    timed = curve[WARMUP_STEPS:]
    seconds = timed[-1].seconds - curve[WARMUP_STEPS - 1].seconds
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _status_bytes("VmHWM")
    return {"method": args.child, "device": device, "peak_bytes": peak, "loaded_bytes": loaded,
            "load_peak_bytes": load_peak,
            "train_adds_bytes": peak - loaded,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "tokens_per_second": sum(r.tokens for r in timed) / seconds, "seconds_per_step": seconds / len(timed),
            "tokens_per_step": sum(r.tokens for r in curve) / len(curve), "final_loss": curve[-1].loss}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--results", default=os.environ.get("HARNESS_RESULTS", "results"))
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--child", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        print(json.dumps(child(args)))
        return 0
    if args.steps <= WARMUP_STEPS:
        p.error(f"--steps must be more than the {WARMUP_STEPS} warm-up steps")
    from harness import models

    models.model_path(models.resolve(args.model), Path(args.results))  # convert/build once, outside the timings
    res = {}
    for method in ("full", "lora"):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--child", method, *sys.argv[1:]], capture_output=True,
                             text=True)
        if out.returncode:
            sys.stderr.write(out.stderr)
            return 2
        res[method] = json.loads(out.stdout.strip().splitlines()[-1]) | {"wall": time.perf_counter() - t0}
    gib = 1 / 2**30
    unit = "peak GPU memory allocated" if res["full"]["device"] == "cuda" else "peak RSS"
    print(f"{args.model}, batch {args.batch}, max length {args.max_length}, {args.steps} steps "
          f"({res['full']['tokens_per_step']:.0f} tokens/step), device {res['full']['device']}"
          f"{', gradient checkpointing' if args.gradient_checkpointing else ''}")
    print(f"| method | trainable params | {unit} (GiB) | train adds (GiB) | load peak (GiB) | train tok/s | s/step "
          f"| wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for m, r in res.items():
        print(f"| {m} | {r['trainable']:,} | {r['peak_bytes'] * gib:.2f} | {r['train_adds_bytes'] * gib:.2f} | "
              f"{r['load_peak_bytes'] * gib:.2f} | "
              f"{r['tokens_per_second']:.0f} | {r['seconds_per_step']:.2f} | {r['wall']:.0f} |")
    ratio = res["lora"]["peak_bytes"] / res["full"]["peak_bytes"]
    print(f"LoRA / full: peak {ratio:.2f}x, train adds "
          f"{res['lora']['train_adds_bytes'] / res['full']['train_adds_bytes']:.2f}x, tokens/s "
          f"{res['lora']['tokens_per_second'] / res['full']['tokens_per_second']:.2f}x; target peak <= {TARGET}x: "
          f"{'met' if ratio <= TARGET else 'NOT met'}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
