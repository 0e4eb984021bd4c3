"""The cell recipe, the same on every executor: load the model, prepare the method, train, save, evaluate, write
the cell's folder.

A job trains one cell (or evaluates a base model) and writes its artefacts to results/runs/.<id>.tmp-<host>-<pid>/,
then renames that folder to results/runs/<id>/: a cell folder is complete or absent, even when two nodes of a cluster
share the results folder. Progress goes to `emit` as events (harness/run/jobs.py); how they reach the runner is the
executor's business.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shutil
import time
import traceback
from pathlib import Path

from harness.core.atomic import move_into_place, temp_path
from harness.models import set_worker_env  # light: no torch
from harness.run.jobs import Evaluating, Job, Step


class Abandoned(Exception):
    """Raised by an executor's `emit` when nobody waits for the cell any more: the cell stops and leaves no folder."""


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


def _write_parquet(rows: list[dict], folder: Path, table: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from harness.store import ARTEFACT_COLUMNS

    pq.write_table(pa.table({c: pa.array([r.get(c) for r in rows], pa.type_for_alias(t))
                             for c, t in ARTEFACT_COLUMNS[table].items()}), folder / f"{table}.parquet")


_ENCODED: dict[tuple, tuple[list, list]] = {}


def _encoded(results: Path, dataset_id: str, model_fp: str, tr: dict, tokenizer) -> tuple[list, list]:
    """A data set's rows and their token ids, kept for the worker's next cells (other methods and seeds of the same
    arm and model reuse them; the chat template is rendered twice per assistant turn, which adds up for 8,000 rows)."""
    from harness.data.build import load_rows

    key = (str(results), dataset_id, model_fp, tr["max_length"], tr["loss_on"])
    if key not in _ENCODED:
        rows = load_rows(results, dataset_id)
        if len(_ENCODED) >= 4:  # a few data sets (a matrix's arms), bounded memory
            _ENCODED.pop(next(iter(_ENCODED)))
        _ENCODED[key] = rows, _encode_once(results, dataset_id, model_fp, tr, tokenizer, rows)
    return _ENCODED[key]


def _encode_once(results: Path, dataset_id: str, model_fp: str, tr: dict, tokenizer, rows: list[dict]) -> list:
    """The rows encoded through the shared cache, by the data set's content, the tokenizer and its template, and the
    encoding's settings: the other workers, nodes and reruns that train on the data set load it (the demo's 8,000
    rows: 1.5-2 s to encode, 0.04 s to load), and a worker that wants it while another encodes it waits."""
    import hashlib

    from harness import __version__
    from harness.core.cache import build_once, cache_dir
    from harness.data.build import dataset_dir
    from harness.train.sft import encode_rows, load_encoded, save_encoded

    content = hashlib.sha256((dataset_dir(results, dataset_id) / "data.jsonl").read_bytes()).hexdigest()
    key = json.dumps([content, model_fp, tokenizer.chat_template, tr["max_length"], tr["loss_on"], __version__])
    made = []

    def encode(tmp: Path) -> None:
        made.append(encode_rows(tokenizer, rows, tr["max_length"], tr["loss_on"]))
        save_encoded(tmp, made[0])

    entry = build_once(cache_dir("encoded") / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz", encode)
    return made[0] if made else load_encoded(entry)


def train_cell(model, tokenizer, cfg: dict, lr: float, device: str, autocast, on_step) -> tuple[object, list, dict]:
    """Fine-tune per the cell's method, data, budget and schedule (harness.train.recipe.fit, on train.devices
    processes); returns the model, its loss curve and counts."""
    from harness.train.recipe import fit
    from harness.train.sft import fit_length

    tr = cfg["train"]
    t0 = time.perf_counter()
    rows, encoded = _encoded(cfg["results"], cfg["dataset_id"], cfg["model_fingerprint"], tr, tokenizer)
    encoded, long_rows = fit_length([r["id"] for r in rows], encoded, tr["too_long"])
    if not encoded:
        raise ValueError(f"every row of data set {cfg['dataset_id']} is longer than train.max_length "
                         f"{tr['max_length']} and train.too_long is drop: raise max_length or truncate")
    encoding = time.perf_counter() - t0
    model, curve, out = fit(model, tokenizer.pad_token_id, cfg, encoded, lr, device, autocast, on_step)
    return model, curve, out | {
        "prep_seconds": out["prep_seconds"] + encoding, "length_decisions": long_rows,
        "rows_over_length": len(long_rows), "rows_dropped": sum(d["action"] == "dropped" for d in long_rows),
        "trained_tokens_lost": sum(d["trained_tokens_lost"] for d in long_rows)}


def save_weights(model, tokenizer, cfg: dict, ref, tmp: Path, final: Path) -> tuple[object, dict]:
    """Keep the trained weights with the cell: a PEFT adapter, or an HF safetensors folder. LoRA is evaluated
    unmerged, as lm-eval's `peft=` applies it: merged weights are the same function but round differently (bits per
    byte 4.2552692 vs ...92 on an fp32 CPU), and the stored scores must be what `harness show`'s lm_eval commands give."""
    import torch

    from harness import models
    from harness.train import cost
    from harness.train.recipe import cast_frozen_linears

    out = {}
    lora = cfg["method_cfg"]["kind"] == "lora"
    if lora:  # an absolute base path: PEFT stores it as given, and a relative one breaks later
        model.peft_config["default"].base_model_name_or_path = str(models.model_path(ref, cfg["results"]).resolve())
    if cfg["keep_weights"]:
        name = "adapter" if lora else "model"
        model.save_pretrained(tmp / name)
        tokenizer.save_pretrained(tmp / name)
        out = {"weights_path": str((final / name).resolve()), "weights_bytes": cost.folder_bytes(tmp / name)}
    if lora:
        cast_frozen_linears(model, torch.float32)  # as lm-eval loads the base: float32 weights under autocast
    return model, out


def identity(job: Job) -> dict:
    """The result row's columns that the job alone determines."""
    cfg = job.config
    return {"run_id": job.id, "kind": job.kind, "model": cfg["model"], "model_fingerprint": cfg["model_fingerprint"],
            "method": cfg.get("method", "base"), "method_kind": cfg.get("method_cfg", {}).get("kind", "base"),
            "arm": cfg.get("arm"), "dataset_id": cfg.get("dataset_id"), "seed": cfg.get("seed"),
            "base_run_id": cfg.get("base_id", job.id), "config": cfg, "status": "running", "error": None,
            "harness_version": job.harness_version}


def _place(tmp: Path, row: dict, final: Path) -> None:
    (tmp / "result.json").write_text(json.dumps(row, indent=1, default=str))
    move_into_place(tmp, final)  # over an earlier failed attempt


def write_failed(job: Job, results: Path, error: str) -> Path:
    """The folder of a cell whose process died before it could write one (a lost node, OOM, kill -9), so that the
    failure and its reason are recorded like any other; a rerun of the matrix runs the cell again."""
    final = results / "runs" / job.id
    tmp = temp_path(final)
    tmp.mkdir(parents=True, exist_ok=True)
    _place(tmp, {**identity(job), "status": "failed", "error": error, "env": None, "finished_at": _now()}, final)
    return final


def warm_up() -> None:
    """The heavy imports (~4 s), once per long-lived worker, before its first cell."""
    set_worker_env()
    import lm_eval.evaluator  # noqa: F401
    import peft  # noqa: F401

    import harness.eval.tasks  # noqa: F401


def run_job(job: Job, results: Path, emit) -> dict:
    """Train (kind 'sft') and/or evaluate (every kind) one job; returns the result row written to result.json."""
    import torch

    from harness.train import cost
    from harness.train.sft import attention_for, autocast_dtype

    set_worker_env()
    cfg = {**job.config, "results": results}
    final = results / "runs" / job.id
    tmp = temp_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(job.threads)
    precision = cfg["train"]["precision"] if job.kind == "sft" else cfg["precision"]
    dtype = autocast_dtype(precision, device)
    attention = attention_for(cfg["train"]["attention"] if job.kind == "sft" else "auto", device)
    row = {**identity(job), "started_at": _now(),
           "env": environment(device, job.threads, str(dtype) if dtype else None, attention),
           "hardware": cost.hardware(device, job.threads)}
    t0 = time.perf_counter()
    memory = cost.PeakMemory(device)
    try:
        with memory:
            curve, scores = _train_and_evaluate(job, cfg, row, tmp, final, (device, dtype, attention), emit, t0)
        peak = cost.peak_flops(row["env"].get("gpu"))
        if peak and row.get("train_flops"):
            row["mfu"] = row["train_flops"] / (row["train_seconds"] * peak * cfg["train"]["devices"])
        _write_parquet([dataclasses.asdict(r) for r in curve], tmp, "train_steps")
        _write_parquet(scores.metrics, tmp, "evals")
        _write_parquet(scores.samples, tmp, "samples")
        row["status"] = "ok"
    except Abandoned:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:  # the cell fails, the matrix goes on; the reason is kept with the cell
        row["status"] = "failed"
        row["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    row["finished_at"] = _now()
    row["wall_seconds"] = time.perf_counter() - t0
    row["peak_rss_bytes"], row["peak_gpu_bytes"] = memory.rss, memory.gpu
    # one device (or one CPU machine) per cell, train.devices of them for a data-parallel cell
    row["device_hours"] = row["wall_seconds"] * (cfg["train"]["devices"] if job.kind == "sft" else 1) / 3600
    row["cost_usd"] = row["device_hours"] * cost.price_per_hour(row["hardware"])
    _place(tmp, row, final)
    return row


def _train_and_evaluate(job: Job, cfg: dict, row: dict, tmp: Path, final: Path, where: tuple, emit,
                        t0: float) -> tuple[list, object]:
    """Load the model, train and save it (kind 'sft'), evaluate it; the timings and counts go into `row`. `where`:
    (device, autocast dtype, attention). Returns the loss curve and the scores."""
    from harness import models
    from harness.eval.tasks import evaluate

    device, dtype, attention = where
    ref = models.resolve(cfg["model"])
    # an adapter is trained further merged, and scored (`harness eval ADAPTER`) unmerged, as a LoRA cell is
    model, tokenizer = models.load(ref, cfg["results"], device, attention, merge=job.kind == "sft")
    row["env"]["chat_template"] = models.chat_template_info(tokenizer)
    row["total_params"] = sum(p.numel() for p in model.parameters())
    row["prep_seconds"] = time.perf_counter() - t0
    curve = []
    if job.kind == "sft":
        model, curve, counts = train_cell(model, tokenizer, cfg, job.lr, device, dtype, _on_step(job, emit))
        _write_parquet(counts.pop("length_decisions", []), tmp, "length_decisions")
        row.update(counts, prep_seconds=row["prep_seconds"] + counts["prep_seconds"])
        model, saved = save_weights(model, tokenizer, cfg, ref, tmp, final)
        row.update(saved)
    emit(Evaluating(job))
    t2 = time.perf_counter()
    ev = cfg["eval"]
    scores = evaluate(model, tokenizer, ev["learn"], ev["forget"], ev.get("include", []), limit=ev["limit"],
                      batch_size=ev["batch_size"], device=device, autocast=dtype)
    row["eval_seconds"] = time.perf_counter() - t2
    row["env"]["eval_attention"] = scores.attention
    return curve, scores


def _on_step(job: Job, emit):
    """The training loop's step callback: a Step event at most every half second, and for the last step."""
    last = [0.0]

    def on_step(rec, total: int):
        if time.perf_counter() - last[0] > 0.5 or rec.step == total - 1:
            last[0] = time.perf_counter()
            emit(Step(job, rec.step + 1, total, rec.loss))

    return on_step
