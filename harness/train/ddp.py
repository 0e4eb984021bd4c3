"""One cell trained data-parallel on several devices of one node (`train.devices: N`).

The cell's worker calls `train`, which runs `python -m torch.distributed.run --standalone --nproc_per_node N -m
harness.train.ddp JOB` (a rendezvous on loopback). Each of the N processes (`main`) loads the model and runs the worker's own
train_cell: the same batch order and the same loop (train.optimize), which sees torch.distributed and trains its share
of every step as DistributedDataParallel. Rank 0 writes the trained parameters (all weights, or the LoRA adapter's) and
the loss curve to a folder; `train` loads them into the worker's model, which is then saved and evaluated as usual.
Backend: nccl on CUDA (one GPU per process), gloo on a CPU (N processes sharing its cores; for tests).
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

from harness.core.atomic import atomic_file


def train(model, tokenizer, cfg: dict, lr: float, device: str, autocast, on_step) -> tuple[object, list, dict]:
    """train_cell's contract (the model, its loss curve and counts), trained by `cfg["train"]["devices"]` processes."""
    import torch
    from safetensors.torch import load_file

    from harness.train.sft import StepRecord
    from harness.run.cell import prepare_method

    n = cfg["train"]["devices"]
    if device.startswith("cuda") and n > torch.cuda.device_count():
        raise ValueError(f"train.devices is {n}, but this node has {torch.cuda.device_count()} GPU(s)")
    runs = Path(cfg["results"]) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".ddp.tmp-", dir=runs))  # `.*.tmp-*`: a crash's leftover is swept
    try:
        # on a CPU the N processes share its cores
        threads = torch.get_num_threads() if device.startswith("cuda") else max(1, torch.get_num_threads() // n)
        job = {"cfg": {**cfg, "results": str(cfg["results"])}, "lr": lr, "parent": os.getpid(), "out": str(folder),
               "threads": threads}
        (folder / "job.json").write_text(json.dumps(job, default=str))
        model.to("cpu")  # the worker's copy waits off the GPU that rank 0 trains on
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node",
               str(n), "-m", "harness.train.ddp", str(folder / "job.json")]
        # the ranks import the same harness as this process, installed or not
        here = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])),
               "OMP_NUM_THREADS": str(threads)}  # set: torchrun would set 1 and say so in the log
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        try:
            for line in proc.stdout:  # rank 0's steps as JSON lines; anything else goes to the log
                event = json.loads(line) if line.startswith('{"event"') else None
                if event and event["event"] == "step":
                    on_step(StepRecord(**event["record"]), event["total"])
                else:
                    sys.stderr.write(line)
            if proc.wait():
                raise RuntimeError(f"data-parallel training on {n} processes failed (torchrun exit code "
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


def main(job_path: str) -> None:
    """One rank: load, train (train_cell under torch.distributed), and on rank 0 write what `train` reads back."""
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    from harness.models import set_worker_env
    from harness.run.cell import train_cell

    set_worker_env()  # first: offline before any Hugging Face import

    from harness import models
    from harness.train.sft import attention_for, autocast_dtype

    job = json.loads(Path(job_path).read_text())
    cfg, out = {**job["cfg"], "results": Path(job["cfg"]["results"])}, Path(job["out"])
    cuda = torch.cuda.is_available()
    local = int(os.environ["LOCAL_RANK"])
    device = f"cuda:{local}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    torch.set_num_threads(job["threads"])
    tr = cfg["train"]
    model, tokenizer = models.load(models.resolve(cfg["model"]), cfg["results"], device,
                                   attention_for(tr["attention"], device))

    def on_step(rec, total: int) -> None:
        try:
            os.kill(job["parent"], 0)
        except ProcessLookupError:
            raise SystemExit("the worker that started this data-parallel run is gone") from None
        if rank == 0:
            print(json.dumps({"event": "step", "record": dataclasses.asdict(rec), "total": total}), flush=True)

    model, curve, counts = train_cell(model, tokenizer, cfg, job["lr"], device,
                                      autocast_dtype(tr["precision"], device), on_step)
    if rank == 0:
        trained = {k: p.detach().contiguous().cpu() for k, p in model.named_parameters() if p.requires_grad}
        save_file(trained, out / "trained.safetensors")
        with atomic_file(out / "result.json") as tmp:
            tmp.write_text(json.dumps({"curve": [dataclasses.asdict(r) for r in curve], "counts": counts}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
