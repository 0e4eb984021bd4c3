"""One cell trained on several devices of one node (`train.devices: N`), data-parallel (`train.strategy: ddp`) or
fully sharded (`fsdp`).

`fit` calls `train`, which runs `python -m torch.distributed.run --standalone --nproc_per_node N -m
harness.train.distributed JOB` (a rendezvous on loopback). Each of the N processes (`main`) loads the model and runs
`fit` on the examples the cell encoded (written to the exchange folder once, so every rank trains on the same token
ids): the same batch order and the same loop (sft.optimize), which sees torch.distributed and trains its share of every
step, as DistributedDataParallel (every device holds the whole model, its gradients and optimizer state) or sharded
by FSDP2 (`shard`: each device holds 1/N of the parameters, gradients and AdamW moments, and gathers one decoder
layer at a time to compute). Rank 0 writes the trained parameters (all weights, or the LoRA adapter's; under fsdp
gathered from the shards) and the loss curve; `train` loads them into the cell's model, which the cell then saves and
evaluates once. Backend: nccl on CUDA (one GPU per process), gloo on a CPU (N processes sharing its cores; for tests).
The exchange folder is a `.*.tmp-*` folder of results/runs/: a rank killed mid-training leaves only it, which the next
run sweeps, and the cell's rerun trains it again from the start (there is no mid-cell checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from harness.core.atomic import atomic_file
from harness.train.sft import Encoded

STRATEGIES = ("ddp", "fsdp")


def train(model, pad_id: int, cfg: dict, encoded: Sequence[Encoded], lr: float, device: str, autocast,
          on_step) -> tuple[object, list, dict]:
    """fit's contract (the model, its loss curve and counts), trained by `cfg["train"]["devices"]` processes."""
    import torch
    from safetensors.torch import load_file

    from harness.train.recipe import prepare_method
    from harness.train.sft import StepRecord

    n, strategy = cfg["train"]["devices"], cfg["train"].get("strategy", "ddp")
    if device.startswith("cuda") and n > torch.cuda.device_count():
        raise ValueError(f"train.devices is {n}, but this node has {torch.cuda.device_count()} GPU(s)")
    runs = Path(cfg["results"]) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".ddp.tmp-", dir=runs))  # `.*.tmp-*`: a crash's leftover is swept
    try:
        # on a CPU the N processes share its cores
        threads = torch.get_num_threads() if device.startswith("cuda") else max(1, torch.get_num_threads() // n)
        job = {"cfg": {**cfg, "results": str(cfg["results"])}, "lr": lr, "parent": os.getpid(), "out": str(folder),
               "threads": threads, "pad_id": pad_id}
        (folder / "job.json").write_text(json.dumps(job, default=str))
        (folder / "encoded.json").write_text(json.dumps([[e.input_ids, e.labels] for e in encoded]))
        model.to("cpu")  # the worker's copy waits off the GPU that rank 0 trains on
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node",
               str(n), "-m", "harness.train.distributed", str(folder / "job.json")]
        # the ranks import the same harness as this process, installed or not, whatever their working directory
        # holds: `python -m` would put it first on sys.path (PYTHONSAFEPATH), and a Ray worker's is the directory
        # its cluster was started from, which may hold another checkout of the harness
        here = str(Path(__file__).resolve().parent.parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])),
               "PYTHONSAFEPATH": "1", "OMP_NUM_THREADS": str(threads)}  # set: torchrun would set 1 and say so
        if not device.startswith("cuda"):
            # glibc keeps freed blocks under its (growing) mmap threshold for reuse: each rank's copy of the whole
            # model, freed once sharded, stayed resident, and SmolLM2-135M full FT on 2 fsdp ranks peaked at 3.1 GiB
            # RSS per rank instead of 1.8 (bench/sharded_memory.py); blocks of 64 KiB and up now go back when freed
            env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        try:
            for line in proc.stdout:  # rank 0's steps as JSON lines; anything else goes to the log
                event = json.loads(line) if line.startswith('{"event"') else None
                if event and event["event"] == "step":
                    on_step(StepRecord(**event["record"]), event["total"])
                else:
                    sys.stderr.write(line)
            if proc.wait():
                raise RuntimeError(f"{strategy} training on {n} processes failed (torchrun exit code "
                                   f"{proc.returncode}); the ranks' errors are in this cell's log above")
        finally:
            if proc.poll() is None:  # the worker is stopping (its parent went away): stop the ranks too
                proc.terminate()
                proc.wait()
        done = json.loads((folder / "result.json").read_text())
        model = prepare_method(model, cfg["method_cfg"], cfg["seed"], autocast)
        trained = load_file(folder / "trained.safetensors")
        unexpected = model.load_state_dict(trained, strict=False).unexpected_keys
        wrong = unexpected or {k for k, p in model.named_parameters() if p.requires_grad} - set(trained)
        if wrong:
            raise RuntimeError(f"the trained weights do not match the model: {sorted(wrong)[:3]}")
        return model.to(device), [StepRecord(**r) for r in done["curve"]], done["counts"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def decoder_layers(model) -> list:
    """The transformer blocks of a Hugging Face decoder (plain or wrapped by peft): FSDP's units of gathering."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(core.base_model, "layers", None)
    if layers is None:
        raise ValueError(f"train.strategy fsdp: cannot find the decoder layers of {type(core).__name__} "
                         f"(expected model.base_model.layers)")
    return list(layers)


def shard(net, model, device: str, autocast):
    """FSDP2 over this process group: each decoder layer of `model` is its own unit (gathered for its forward and
    backward, then freed), then the root `net` (embeddings, final norm, LM head: everything else). Parameters,
    gradients (reduce-scattered in every backward) and the optimizer state built from the sharded parameters are 1/N
    per process. On a GPU the weights are gathered and multiplied in bf16 when the cell autocasts to bf16, gradients
    reduced in fp32 (MixedPrecisionPolicy); on a CPU they stay as they are (autocast still applies)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    cuda = device.startswith("cuda")
    mesh = init_device_mesh("cuda" if cuda else "cpu", (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=autocast, reduce_dtype=torch.float32) if cuda and autocast \
        else MixedPrecisionPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    return fully_shard(net, mesh=mesh, mp_policy=mp)


def main(job_path: str) -> None:
    """One rank: load, fit under torch.distributed, and on rank 0 write what `train` reads back."""
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from harness.models import set_worker_env

    set_worker_env()  # first: offline before any Hugging Face import

    from harness import models
    from harness.train.recipe import fit
    from harness.train.sft import attention_for, autocast_dtype

    job = json.loads(Path(job_path).read_text())
    cfg, out = {**job["cfg"], "results": Path(job["cfg"]["results"])}, Path(job["out"])
    encoded = [Encoded(ids, labels) for ids, labels in json.loads((out / "encoded.json").read_text())]
    cuda = torch.cuda.is_available()
    local = int(os.environ["LOCAL_RANK"])
    device = f"cuda:{local}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    torch.set_num_threads(job["threads"])
    tr = cfg["train"]
    # fsdp: the whole model never sits on one device; fully_shard moves each layer's shard there as it shards it
    model, _ = models.load(models.resolve(cfg["model"]), cfg["results"],
                           "cpu" if tr.get("strategy") == "fsdp" else device, attention_for(tr["attention"], device))

    def on_step(rec, total: int) -> None:
        try:
            os.kill(job["parent"], 0)
        except ProcessLookupError:
            raise SystemExit("the worker that started this multi-process run is gone") from None
        if rank == 0:
            print(json.dumps({"event": "step", "record": dataclasses.asdict(rec), "total": total}), flush=True)

    model, curve, counts = fit(model, job["pad_id"], cfg, encoded, job["lr"], device,
                               autocast_dtype(tr["precision"], device), on_step)
    names = {k for k, p in model.named_parameters() if p.requires_grad}
    # every rank takes part in gathering the shards; rank 0 alone receives the full tensors, in CPU memory
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        save_file({k: v.contiguous() for k, v in full.items() if k in names}, out / "trained.safetensors")
        with atomic_file(out / "result.json") as tmp:
            tmp.write_text(json.dumps({"curve": [dataclasses.asdict(r) for r in curve], "counts": counts}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
