"""Per-process peak memory of fsdp training at 1, 2 and 4 processes, against the memory plan (harness.train.cost).

    python bench/sharded_memory.py [--model smollm2-135m] [--processes 1 2 4] [--methods full lora] [--batch 8]
                                   [--steps 4] [--max-length 128] [--precision fp32] [--results results]

For each method and process count, `torchrun --nproc_per_node N` (gloo on a CPU, nccl on GPUs) runs this file's
`rank`: load the model as a cell does (models.load), prepare the method (recipe.prepare_method; LoRA r 16, alpha 32,
all linear layers), and train with the harness's loop (sft.optimize, train.strategy fsdp when N > 1, one process
without torch.distributed when N = 1, as a cell with train.devices 1 runs) on skills-pool examples, each process taking
its share of every global batch (sft.step_batches). Memory is what a process holds while it trains: on a CPU its peak
resident set (VmHWM) from the end of the first step (the model sharded, AdamW's state allocated) to the end, so the
one-off peak of loading the whole model before sharding it is left out (reported as "load"); on a GPU
torch.cuda.max_memory_allocated over the same steps. Every process runs with MALLOC_MMAP_THRESHOLD_=65536, as a cell's
CPU ranks do (distributed.train): otherwise glibc keeps the freed full model copy resident and RSS measures the
allocator's cache, not what training holds. The plan's estimate (cost.memory_estimate, told the widest
micro-batch's row length and labelled tokens that the process actually saw) is printed beside it; the exit code is 1
when any estimate is off the measurement by more than 25%.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import _reset_peak, _status_bytes  # noqa: E402  (bench/memory.py: /proc readings)

TOLERANCE = 0.25
LORA = {"kind": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}


def rank(args) -> None:
    import torch
    import torch.distributed as dist
    from transformers import AutoConfig

    from harness import models
    from harness.data import world
    from harness.train import cost
    from harness.train.recipe import prepare_method
    from harness.train.sft import attention_for, autocast_dtype, batch_order, encode_example, optimize, step_batches

    world_size = int(os.environ.get("WORLD_SIZE", 1))
    cuda = torch.cuda.is_available()
    device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if cuda else "cpu"
    if world_size > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    r = dist.get_rank() if world_size > 1 else 0
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    ref = models.resolve(args.model)
    model, tok = models.load(ref, Path(args.results), "cpu" if world_size > 1 else device,
                             attention_for("auto", device))
    load_peak = _status_bytes("VmHWM")
    dtype = autocast_dtype(args.precision, device)
    method = LORA if args.child == "lora" else {"kind": "full"}
    model = prepare_method(model, method, seed=0, autocast=dtype)
    rows = world.generate_pool(size=args.batch * args.steps * 4, seed=0)
    encoded = [encode_example(tok, x["prompt"], x["response"], args.max_length) for x in rows]
    order = batch_order([len(e.input_ids) for e in encoded], args.batch, seed=0, steps=args.steps)
    steps = list(step_batches(encoded, order, tok.pad_token_id, rank=r, world=world_size))
    widest = max(b.input_ids.shape[1] for s in steps for b in s)
    labels = max(b.n_label_tokens for s in steps for b in s)
    after_first = {}

    def measured():  # step 0 ends when the loop asks for step 1's batches
        for k, s in enumerate(steps):
            if k == 1:
                torch.cuda.reset_peak_memory_stats() if cuda else _reset_peak()
                after_first["rss"] = _status_bytes("VmRSS")
            yield s

    curve = optimize(model, measured(), len(steps), lr=2e-5 if method["kind"] == "full" else 2e-4,
                     precision=args.precision, device=device, strategy="fsdp")
    peak = torch.cuda.max_memory_allocated() if cuda else _status_bytes("VmHWM")
    arch = cost.Arch.from_config(AutoConfig.from_pretrained(models.model_path(ref, Path(args.results))))
    train = {"devices": world_size, "strategy": "fsdp", "batch_size": args.batch, "grad_accum": 1,
             "max_length": args.max_length, "attention": "auto"}
    est = cost.memory_estimate(arch, method, train, device, dtype is not None, label_tokens=labels,
                               row_length=widest)
    out = {"method": method["kind"], "processes": world_size, "rank": r, "device": device, "peak": peak,
           "after_first_step": after_first.get("rss"), "load_peak": load_peak, "estimate": est.total,
           "parts": {k: getattr(est, k) for k in ("weights", "gradients", "optimizer", "activations", "runtime")},
           "final_loss": curve[-1].loss}
    Path(args.out, f"{method['kind']}-{world_size}-{r}.json").write_text(json.dumps(out))
    if world_size > 1:
        dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--methods", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--precision", default="fp32", choices=["auto", "bf16", "fp32"])
    p.add_argument("--results", default=os.environ.get("HARNESS_RESULTS", "results"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        rank(args)
        return 0
    import tempfile

    from harness import models

    models.model_path(models.resolve(args.model), Path(args.results))  # convert/build once, outside the runs
    here = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    gib, worst = 1 / 2**30, 0.0
    print(f"{args.model}, global batch {args.batch}, max length {args.max_length}, {args.steps} steps, precision "
          f"{args.precision}; fsdp over N processes (N = 1: one plain process)")
    print("| method | N | rank | peak GiB (measured) | plan GiB | plan/measured | weights | grads | AdamW "
          "| activations | runtime | RSS after step 1 | load peak |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for method in args.methods:
        for n in args.processes:
            with tempfile.TemporaryDirectory() as out:
                child = [__file__, *sys.argv[1:], "--child", method, "--out", out]
                cmd = [sys.executable, *child] if n == 1 else [
                    sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node",
                    str(n), *child]
                # as distributed.train runs a cell's CPU ranks: freed blocks of 64 KiB and up go back to the system
                done = subprocess.run(cmd, env=env | {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n)),
                                                      "MALLOC_MMAP_THRESHOLD_": "65536"},
                                      capture_output=True, text=True)
                if done.returncode:
                    sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
                    return 2
                for f in sorted(Path(out).glob("*.json")):
                    x = json.loads(f.read_text())
                    ratio = x["estimate"] / x["peak"]
                    worst = max(worst, abs(ratio - 1))
                    parts = " | ".join(f"{v * gib:.3f}" for v in x["parts"].values())
                    print(f"| {method} | {n} | {x['rank']} | {x['peak'] * gib:.3f} | {x['estimate'] * gib:.3f} | "
                          f"{ratio:.2f} | {parts} | {(x['after_first_step'] or 0) * gib:.3f} | "
                          f"{x['load_peak'] * gib:.3f} |", flush=True)
    met = "met" if worst <= TOLERANCE else "NOT met"
    print(f"largest |plan/measured - 1|: {worst:.0%} (target <= {TOLERANCE:.0%}: {met})")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
