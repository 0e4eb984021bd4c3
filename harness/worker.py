"""A cell worker: `python -m harness.worker RESULTS` reads jobs (JSON lines) on stdin and runs each one.

A job trains one cell (or evaluates a base model) and writes its artefacts to results/runs/.<id>.tmp-<pid>/, then
renames that folder to results/runs/<id>/: a cell folder is complete or absent. Progress events go to the parent as
JSON lines on the original stdout; everything libraries print goes to stderr (the worker's log file).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

from harness.models import offline_env  # light: no torch

for _k, _v in {**offline_env(), "TOKENIZERS_PARALLELISM": "false"}.items():  # offline unless HARNESS_ONLINE=1
    os.environ.setdefault(_k, _v)


class ParentGone(RuntimeError):
    pass


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def environment(device: str, threads: int, precision: str | None, attention: str) -> dict:
    import lm_eval
    import peft
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "peft": peft.__version__, "lm_eval": lm_eval.__version__, "platform": platform.platform(),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "threads": threads,
           "device": device, "autocast": precision, "attention": attention}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    return env


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
    """Store LoRA's frozen base linears in the autocast dtype (and back to float32 before merging). Autocast multiplies
    them in bf16 anyway, so no product changes; what goes is their fp32 copy and the bf16 copy autocast keeps for the
    backward pass. On SmolLM2-135M at batch 8 LoRA's peak RSS went from 0.61x to 0.47x of full FT's with this and
    models.load's own copies of the weights (bench/memory.py)."""
    from peft.tuners.lora import LoraLayer

    for m in model.modules():
        if isinstance(m, LoraLayer):
            for p in (m.base_layer.weight, getattr(m.base_layer, "bias", None)):
                if p is not None:
                    p.data = p.data.to(dtype)


def _write_parquet(rows: list[dict], path: Path, columns: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({c: pa.array([r.get(c) for r in rows], t) for c, t in columns.items()}), path)


def run_job(job: dict, results: Path, emit) -> dict:
    """Train (kind 'sft') and/or evaluate (every kind) one job; returns the result row written to result.json."""
    import pyarrow as pa
    import torch

    from harness import data, models
    from harness.evaluate import evaluate
    from harness.train import attention_for, autocast_dtype, batch_order, collate, encode_example, optimize

    run_id, cfg = job["id"], job["config"]
    parent = os.getppid()
    tmp = results / "runs" / f".{run_id}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(job["threads"])
    precision = cfg["train"]["precision"] if job["kind"] == "sft" else cfg["precision"]
    dtype = autocast_dtype(precision, device)
    attention = attention_for(cfg["train"]["attention"] if job["kind"] == "sft" else "auto", device)
    row = {"run_id": run_id, "kind": job["kind"], "model": cfg["model"], "model_fingerprint": cfg["model_fingerprint"],
           "method": cfg.get("method", "base"), "method_kind": cfg.get("method_cfg", {}).get("kind", "base"),
           "arm": cfg.get("arm"), "dataset_id": cfg.get("dataset_id"), "seed": cfg.get("seed"),
           "base_run_id": cfg.get("base_id", run_id), "config": cfg, "status": "running", "error": None,
           "started_at": _now(), "env": environment(device, job["threads"], str(dtype) if dtype else None, attention),
           "harness_version": job["harness_version"]}
    t0 = time.perf_counter()
    try:
        ref = models.resolve(cfg["model"])
        model, tokenizer = models.load(ref, results, device, attention)
        row["env"]["chat_template"] = models.chat_template_info(tokenizer)
        row["total_params"] = sum(p.numel() for p in model.parameters())
        curve = []
        if job["kind"] == "sft":
            rows = data.load_rows(results, cfg["dataset_id"])
            tr = cfg["train"]
            if tr["gradient_checkpointing"]:  # non-reentrant: also right for LoRA, whose inputs need no grad
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model = prepare_method(model, cfg["method_cfg"], cfg["seed"], dtype)
            row["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            encoded = [encode_example(tokenizer, r["prompt"], r["response"], tr["max_length"]) for r in rows]
            lengths = [len(e.input_ids) for e in encoded]
            order = batch_order(lengths, tr["batch_size"], cfg["seed"], **cfg["budget"])
            row.update(examples=len(rows), steps=len(order), epochs=len(order) * tr["batch_size"] / len(rows),
                       prep_seconds=time.perf_counter() - t0)
            last = [0.0]

            def on_step(rec):
                if os.getppid() != parent:
                    raise ParentGone("the harness process that started this worker is gone")
                now = time.perf_counter()
                if now - last[0] > 0.5 or rec.step == len(order) - 1:
                    last[0] = now
                    emit({"event": "step", "id": run_id, "step": rec.step + 1, "total": len(order), "loss": rec.loss})

            t1 = time.perf_counter()
            curve = optimize(model, (collate([encoded[i] for i in idx], tokenizer.pad_token_id) for idx in order),
                             total_steps=len(order), lr=job["lr"], schedule=tr["schedule"], warmup=tr["warmup"],
                             weight_decay=tr["weight_decay"], grad_clip=tr["grad_clip"], precision=tr["precision"],
                             device=device, on_step=on_step)
            row["train_seconds"] = time.perf_counter() - t1
            row["train_tokens"] = sum(r.tokens for r in curve)
            row["response_tokens"] = sum(r.label_tokens for r in curve)
            if cfg["method_cfg"]["kind"] == "lora":
                model.peft_config["default"].base_model_name_or_path = str(models.model_path(ref, results).resolve())
                if cfg["keep_weights"]:
                    model.save_pretrained(tmp / "adapter")
                    tokenizer.save_pretrained(tmp / "adapter")
                    row["weights_path"] = str((results / "runs" / run_id / "adapter").resolve())
                cast_frozen_linears(model, torch.float32)  # merge in float32
                model = model.merge_and_unload()  # evaluate the merged weights: same function, faster
            elif cfg["keep_weights"]:
                model.save_pretrained(tmp / "model")
                tokenizer.save_pretrained(tmp / "model")
                row["weights_path"] = str((results / "runs" / run_id / "model").resolve())
        else:
            row["prep_seconds"] = time.perf_counter() - t0
        emit({"event": "eval", "id": run_id})
        t2 = time.perf_counter()
        ev = cfg["eval"]
        scores = evaluate(model, tokenizer, ev["learn"], ev["forget"], limit=ev["limit"], batch_size=ev["batch_size"],
                          device=device, autocast=dtype)
        row["eval_seconds"] = time.perf_counter() - t2
        _write_parquet([{"step": r.step, "loss": r.loss, "lr": r.lr, "tokens": r.tokens,
                         "label_tokens": r.label_tokens, "seconds": r.seconds} for r in curve],
                       tmp / "train_steps.parquet",
                       {"step": pa.int32(), "loss": pa.float64(), "lr": pa.float64(), "tokens": pa.int32(),
                        "label_tokens": pa.int32(), "seconds": pa.float64()})
        _write_parquet(scores.metrics, tmp / "evals.parquet",
                       {"task": pa.string(), "task_group": pa.string(), "metric": pa.string(), "value": pa.float64(),
                        "stderr": pa.float64(), "n": pa.int32(), "higher_is_better": pa.bool_(),
                        "is_primary": pa.bool_()})
        _write_parquet(scores.samples, tmp / "samples.parquet",
                       {"task": pa.string(), "task_group": pa.string(), "doc_id": pa.int32(), "prompt": pa.string(),
                        "target": pa.string(), "response": pa.string(), "score": pa.float64(),
                        "metrics": pa.string()})
        row["status"] = "ok"
    except ParentGone:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:  # the cell fails, the matrix goes on; the reason is kept with the cell
        row["status"] = "failed"
        row["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    row["finished_at"] = _now()
    row["wall_seconds"] = time.perf_counter() - t0
    (tmp / "result.json").write_text(json.dumps(row, indent=1, default=str))
    final = results / "runs" / run_id
    shutil.rmtree(final, ignore_errors=True)  # an earlier failed attempt
    os.replace(tmp, final)
    return row


def main() -> None:
    results = Path(sys.argv[1])
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints go to the log, not into the event stream

    def emit(event: dict) -> None:
        events.write(json.dumps(event) + "\n")

    emit({"event": "ready"})
    for line in sys.stdin:
        job = json.loads(line)
        emit({"event": "start", "id": job["id"]})
        try:
            row = run_job(job, results, emit)
        except ParentGone:
            return
        emit({"event": "done", "id": job["id"], "status": row["status"], "error": row["error"]})


if __name__ == "__main__":
    main()
