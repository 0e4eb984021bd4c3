"""`harness bench`: the harness's trainer against TRL's SFTTrainer on the same model, data, batches and loss.

Both sides get the same pre-tokenized examples (prompt masked with -100), the same batches in the same order (TRL's
dataloader is handed the harness's batch order), the same initial weights (LoRA adapters drawn from the same seed),
the same AdamW and warm-up + cosine-to-lr/10 schedule (the harness's, passed to TRL), gradient clipping, bf16 autocast.
Throughput counts non-pad tokens per second over the steps after a short warm-up; "final loss" is the mean training
loss of the last 10 steps, which are the same batches on both sides, so the two must agree closely.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.core.atomic import atomic_file

WARMUP_STEPS = 5  # first steps excluded from throughput (allocator and kernel warm-up)


@dataclass
class Result:
    setting: str
    trainer: str
    tokens_per_second: float
    final_loss: float
    steps: int


def _examples(tokenizer, n: int, max_length: int):
    from harness.data import world
    from harness.train.sft import encode_example

    rows = world.generate_pool(size=n, seed=7, defects={k: 0.0 for k in world.DEFAULT_DEFECTS})
    return [encode_example(tokenizer, r["prompt"], r["response"], max_length) for r in rows]


def _throughput(times: list[float], tokens: list[int]) -> float:
    return sum(tokens[WARMUP_STEPS:]) / sum(times[WARMUP_STEPS:])


def run_harness(model, tokenizer, examples, order, lr: float, packing: bool, device: str
                ) -> tuple[float, list[float]]:
    from harness.train.sft import collate, optimize, pack

    stamps = [time.perf_counter()]
    tokens: list[int] = []

    def on_step(rec, total):
        stamps.append(time.perf_counter())
        tokens.append(rec.tokens)

    pad = tokenizer.pad_token_id
    batches = (pack([examples[i] for i in idx], pad, 256) if packing else collate([examples[i] for i in idx], pad)
               for idx in order)
    curve = optimize(model, batches, len(order), lr, device=device, sync_every=1, on_step=on_step)
    times = [b - a for a, b in zip(stamps, stamps[1:])]
    return _throughput(times, tokens), [r.loss for r in curve]


def run_trl(model, tokenizer, examples, order, lr: float, padding_free: bool, workdir: Path, device: str
            ) -> tuple[float, list[float]]:
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from harness.train.sft import adamw, lr_at

    data = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])

    class FixedOrder(SFTTrainer):  # the harness's batches, in the harness's order
        def get_train_dataloader(self):
            loader = torch.utils.data.DataLoader(self.train_dataset, batch_sampler=order, collate_fn=self.data_collator)
            return self.accelerator.prepare(loader)

    class Clock(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], 0.0

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.start)

    losses: list[float] = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    cfg = SFTConfig(output_dir=str(workdir), max_steps=len(order), per_device_train_batch_size=len(order[0]),
                    learning_rate=lr, max_grad_norm=1.0, bf16=True, use_cpu=device == "cpu", gradient_checkpointing=False,
                    padding_free=padding_free, max_length=None if padding_free else 1024, logging_steps=1,
                    save_strategy="no", report_to=[], disable_tqdm=True, seed=0, dataloader_num_workers=0)
    clock = Clock()
    # the harness's optimizer and schedule, handed to TRL, so that only the trainers differ
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, len(order), lr, "cosine", 0.1) / lr)
    trainer = FixedOrder(model=model, args=cfg, train_dataset=data, processing_class=tokenizer,
                         callbacks=[clock, Losses()], optimizers=(opt, sched))
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    step_tokens = [sum(len(examples[i].input_ids) for i in idx) for idx in order]
    return _throughput(clock.times, step_tokens), losses


def speed(model_ref: str, method: str, steps: int, batch_size: int, results: Path, repeats: int = 2,
          log=print) -> list[Result]:
    """One setting (model x method): the harness (padded, and packed) vs TRL padded and TRL padding-free, on the
    GPU when there is one (the harness with its own attention choice, TRL with SDPA and with eager)."""
    import tempfile

    import torch

    from harness import models
    from harness.train.sft import attention_for, batch_order
    from harness.train.recipe import prepare_method

    ref = models.resolve(model_ref)
    method_cfg = {"kind": method, "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
    lr = 1e-3 if ref.kind == "builtin" else (2e-4 if method == "lora" else 2e-5)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mine = attention_for("auto", device)
    base_models = {}
    for attention in ("eager", "sdpa"):
        m, tok = models.load(ref, results, device, attention)
        base_models[attention] = m
    examples = _examples(tok, 2000, 256)
    order = batch_order([len(e.input_ids) for e in examples], batch_size, seed=0, steps=steps)
    setting = f"{model_ref} {method}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else "")
    out = []
    runs = [(f"harness padded, {mine}", mine, lambda m: run_harness(m, tok, examples, order, lr, False, device)),
            (f"harness packed, {mine}", mine, lambda m: run_harness(m, tok, examples, order, lr, True, device))]
    for attention in ("sdpa", "eager"):
        runs += [(f"TRL padded, {attention}", attention,
                  lambda m: run_trl(m, tok, examples, order, lr, False, Path(tempfile.mkdtemp()), device)),
                 (f"TRL padding-free, {attention}", attention,
                  lambda m: run_trl(m, tok, examples, order, lr, True, Path(tempfile.mkdtemp()), device))]
    # one short discarded run first: the first trainer measured would otherwise pay for CUDA context, cuBLAS handles
    # and kernel selection (on an H200 the harness measured 8.4k tok/s cold and 15.6k warm on the same batches)
    run_harness(prepare_method(copy.deepcopy(base_models[mine]), method_cfg, seed=0), tok, examples,
                order[:2 * WARMUP_STEPS], lr, False, device)
    for name, attention, fn in runs:
        best = 0.0
        for _ in range(repeats):  # best of N: on a shared machine, interference only ever slows a run down
            model = prepare_method(copy.deepcopy(base_models[attention]), method_cfg, seed=0)
            torch.manual_seed(0)
            tps, losses = fn(model)
            best = max(best, tps)
        out.append(Result(setting, name, best, statistics.fmean(losses[-10:]), len(losses)))
        log(f"  {setting}: {name}: {best:,.0f} tok/s (best of {repeats}), final loss {out[-1].final_loss:.4f}")
    return out


def report(rows: list[Result]) -> list[dict]:
    """Ratios against TRL's default (padded, SDPA: what SFTTrainer does with a model path) and TRL's best mode."""
    table = []
    for setting in dict.fromkeys(r.setting for r in rows):
        mine = [r for r in rows if r.setting == setting and r.trainer.startswith("harness")]
        trl = [r for r in rows if r.setting == setting and r.trainer.startswith("TRL")]
        default = next(r for r in trl if r.trainer == "TRL padded, sdpa")
        best = max(trl, key=lambda r: r.tokens_per_second)
        harness = max(mine, key=lambda r: r.tokens_per_second)
        same = next(r for r in trl if r.trainer == "TRL padded, " + harness.trainer.rsplit(", ", 1)[1])
        table.append({"setting": setting, "harness": harness.trainer, "harness_tok_s": harness.tokens_per_second,
                      "trl_default_tok_s": default.tokens_per_second, "trl_best": best.trainer,
                      "trl_best_tok_s": best.tokens_per_second,
                      "vs_default": harness.tokens_per_second / default.tokens_per_second,
                      "vs_best": harness.tokens_per_second / best.tokens_per_second,
                      "loss_harness": harness.final_loss, "loss_trl_default": default.final_loss,
                      # the same work, to the attention kernel: TRL padded with the harness's attention (SDPA and
                      # eager alone differ by up to ~1.5% in a 30-step mean of bf16 losses)
                      "loss_gap": abs(harness.final_loss - same.final_loss) / same.final_loss})
    return table


def save(rows: list[Result], table: list[dict], path: Path) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps({"runs": [asdict(r) for r in rows], "summary": table}, indent=1))
