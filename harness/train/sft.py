"""Supervised fine-tuning: one loop for full fine-tuning and LoRA, and for the tiny base's pretraining.

The SFT loss is cross-entropy over response tokens only (prompt tokens carry label -100), averaged over the
response tokens of the whole global batch of an optimizer step, when that step is split into micro-batches (gradient
accumulation) and across processes (DDP), so that any split trains exactly as one batch would. A chat row trains as
its whole conversation through the model's chat template: every assistant turn (with its end-of-turn token) is a
response, or only the final one (train.loss_on: last); system and user turns are context.
Logits are computed only where a label exists: the LM head runs on the selected hidden states, which skips the prompt
positions' vocab-sized projection (a real saving when prompts are long).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -100


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE on every position that carries no loss (system, user, template markers)
    cut: int = 0  # tokens cut off by max_length
    trained_lost: int = 0  # of those, trained ones

    @property
    def n_response(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def _end_of_turn(tokenizer, text: str) -> str:
    """An assistant turn as rendered, without the separator a template writes after its end-of-turn token (ChatML's
    "<|im_end|>\\n"): the end-of-turn token is trained (the model must learn to stop), the separator is not:
    generation has stopped before it, and it belongs to the next turn."""
    if any(text.rstrip().endswith(t) for t in tokenizer.all_special_tokens):
        return text.rstrip()
    return text


def conversation_segments(tokenizer, messages: list[dict], loss_on: str = "all") -> list[tuple[str, bool]]:
    """A conversation rendered by the tokenizer's chat template, cut into (text, trained) segments.

    The cuts come from the template's own rendering, never from searching its output: for each assistant turn i,
    the conversation up to it rendered with add_generation_prompt=True ends where that turn's text starts, and the
    conversation including it ends where it stops. Everything else (system and user turns, role markers, a default
    system prompt the template adds) is context. loss_on "all" trains every assistant turn, "last" only the final one.
    A template that rewrites earlier turns when later ones follow (some drop past reasoning) has no such prefixes
    and is refused: its training text would differ from what the model sees in use.
    """
    def render(turns, generation):
        return tokenizer.apply_chat_template(turns, add_generation_prompt=generation, tokenize=False)

    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    segments, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt, full = render(messages[:i], True), render(messages[:i + 1], False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError(f"messages.{i}: the chat template does not render the turns before this assistant "
                             f"turn as a prefix of the conversation including it (it rewrites earlier turns), so "
                             f"it cannot be trained turn by turn")
        turn = _end_of_turn(tokenizer, full[len(prompt):])
        segments += [(prompt[len(done):], False), (turn, loss_on == "all" or i == last)]
        done = prompt + turn
    return segments


def encode_conversation(tokenizer, messages: list[dict], max_length: int, loss_on: str = "all") -> Encoded:
    """Token ids and labels of a conversation: each segment of `conversation_segments` tokenized on its own, so no
    BPE merge can blur a boundary between context and trained text; only trained segments carry labels. The ids
    are cut at max_length (keeping the start); `trained_lost` counts the trained tokens that cut removed."""
    segments = conversation_segments(tokenizer, messages, loss_on)
    return _assemble(segments, tokenizer([t for t, _ in segments], add_special_tokens=False)["input_ids"], max_length)


def _assemble(segments: list[tuple[str, bool]], parts: list[list[int]], max_length: int) -> Encoded:
    """A conversation's Encoded from its segments and their token ids."""
    ids, labels = [], []
    for (_, trained), part in zip(segments, parts):
        ids += part
        labels += part if trained else [IGNORE] * len(part)
    lost = sum(1 for t in labels[max_length:] if t != IGNORE)
    return Encoded(ids[:max_length], labels[:max_length], max(0, len(ids) - max_length), lost)


def encode_example(tokenizer, prompt: str, response: str, max_length: int) -> Encoded:
    """One exchange: a conversation of one user turn and the assistant's response (the template's default system
    prompt, if it adds one, is added here and at eval time alike)."""
    return encode_conversation(tokenizer, _exchange(prompt, response), max_length)


def _exchange(prompt: str, response: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def _row_segments(tokenizer, row: dict, loss_on: str) -> list[tuple[str, bool]]:
    """A data set row's segments: a chat row trains as its whole conversation (`messages`), a {prompt, response}
    row as one exchange."""
    if not row.get("messages"):
        return conversation_segments(tokenizer, _exchange(row["prompt"], row["response"]))
    try:
        return conversation_segments(tokenizer, row["messages"], loss_on)
    except ValueError as e:
        raise ValueError(f"row {row.get('id')}: {e}") from None


def encode_rows(tokenizer, rows: list[dict], max_length: int, loss_on: str = "all", chunk: int = 4096) -> list[Encoded]:
    """Each data set row's token ids and labels (a chat row trains as its whole conversation, a {prompt,
    response} row as one exchange), with one tokenizer call per `chunk` rows: the call's own cost, not the
    tokenizing, dominated short rows (8,000 demo rows, EPYC-AVX2: 2.0-2.6 s a call per row, 1.5-2.1 s)."""
    out = []
    for i in range(0, len(rows), chunk):
        segments = [_row_segments(tokenizer, r, loss_on) for r in rows[i:i + chunk]]
        parts = iter(tokenizer([t for s in segments for t, _ in s], add_special_tokens=False)["input_ids"])
        out += [_assemble(s, [next(parts) for _ in s], max_length) for s in segments]
    return out


def save_encoded(path, encoded: list[Encoded]) -> None:
    """A data set's encoding as flat int32 arrays (np.load reads them back with allow_pickle=False)."""
    def flat(field: str):
        return np.fromiter((t for e in encoded for t in getattr(e, field)), np.int32)

    with open(path, "wb") as f:  # a file object: np.savez would add ".npz" to a temporary name
        np.savez(f, input_ids=flat("input_ids"), labels=flat("labels"),
                 lengths=np.array([len(e.input_ids) for e in encoded], np.int64),
                 cut=np.array([e.cut for e in encoded], np.int64),
                 trained_lost=np.array([e.trained_lost for e in encoded], np.int64))


def load_encoded(path) -> list[Encoded]:
    with np.load(path, allow_pickle=False) as z:
        ids, labels, lengths = z["input_ids"].tolist(), z["labels"].tolist(), z["lengths"].tolist()
        cut, lost = z["cut"].tolist(), z["trained_lost"].tolist()
    ends = np.cumsum(lengths).tolist()
    return [Encoded(ids[e - n:e], labels[e - n:e], c, t) for e, n, c, t in zip(ends, lengths, cut, lost)]


def fit_length(ids: Sequence[str], encoded: Sequence[Encoded], too_long: str) -> tuple[list[Encoded], list[dict]]:
    """The train.too_long policy for rows longer than max_length: "truncate" trains their start (already cut by the
    encoder), "drop" leaves them out. Returns the examples to train on and one decision per long row (its id, what
    was done, its tokens and trained tokens before the cut, the trained tokens lost)."""
    decisions = [{"example_id": i, "action": "dropped" if too_long == "drop" else "truncated",
                  "tokens": len(e.input_ids) + e.cut, "trained_tokens": e.n_response + e.trained_lost,
                  "trained_tokens_lost": e.n_response + e.trained_lost if too_long == "drop" else e.trained_lost}
                 for i, e in zip(ids, encoded) if e.cut]
    kept = [e for e in encoded if not e.cut] if too_long == "drop" else list(encoded)
    return kept, decisions


@dataclass
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None  # padded rows
    position_ids: torch.Tensor | None  # packed rows: positions restart at every sequence
    n_tokens: int  # non-pad tokens
    # where the loss is taken, computed once on the CPU so the step never waits on the device to find them:
    select: torch.Tensor = None  # flat indices of positions t (of rows[:, :-1]) whose next token t+1 has a label
    targets: torch.Tensor = None  # those next tokens

    def __post_init__(self):
        if self.select is None:
            nxt = self.labels[:, 1:].reshape(-1)
            self.select = (nxt != IGNORE).nonzero().flatten()
            self.targets = nxt[self.select]

    @property
    def n_label_tokens(self) -> int:
        return len(self.select)

    def to(self, device: str) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.labels), move(self.attention_mask), move(self.position_ids),
                     self.n_tokens, move(self.select), move(self.targets))


def collate(examples: Sequence[Encoded], pad_id: int) -> Batch:
    """Right-pad to the longest example in the batch."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return Batch(ids, labels, mask, None, int(mask.sum()))


def pack(examples: Sequence[Encoded], pad_id: int, row_length: int) -> Batch:
    """Padding-free batch: examples laid end to end in rows of up to row_length tokens (first-fit decreasing),
    position ids restarting at each example. With use_cache=False, transformers turns restarting position ids into
    a block-diagonal causal mask (eager and SDPA alike), so no example attends to another; tested against collate.
    A sequence's first token is never a target (as in a padded row), so the token before it predicts nothing."""
    row_length = max(row_length, max(len(e.input_ids) for e in examples))
    rows: list[list[Encoded]] = []
    space: list[int] = []
    for e in sorted(examples, key=lambda e: -len(e.input_ids)):
        i = next((k for k, free in enumerate(space) if free >= len(e.input_ids)), None)
        if i is None:
            rows.append([])
            space.append(row_length)
            i = len(rows) - 1
        rows[i].append(e)
        space[i] -= len(e.input_ids)
    width = max(row_length - free for free in space)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for e in row:
            n = len(e.input_ids)
            ids[r, at:at + n] = torch.tensor(e.input_ids)
            labels[r, at + 1:at + n] = torch.tensor(e.labels[1:])
            pos[r, at:at + n] = torch.arange(n)
            at += n
        pos[r, at:] = torch.arange(width - at)  # trailing pad: a sequence of its own, never a target
    return Batch(ids, labels, None, pos, sum(len(e.input_ids) for e in examples))


def empty_batch(pad_id: int) -> Batch:
    """A batch with no tokens to learn from: a DDP rank whose share of a step is empty still has to take part in the
    step's gradient all-reduce, and trains on this (loss 0, gradient 0)."""
    return Batch(torch.full((1, 2), pad_id), torch.full((1, 2), IGNORE), torch.ones((1, 2), dtype=torch.long), None, 0)


def step_batches(encoded: Sequence[Encoded], order: Sequence[Sequence[int]], pad_id: int, packing: bool = False,
                 max_length: int = 256, grad_accum: int = 1, rank: int = 0, world: int = 1) -> Iterator[list[Batch]]:
    """Each optimizer step's micro-batches for one process: the global batch of step s is batch_order's batch s
    whatever the number of devices; rank r takes its examples r, r+world, ... (batch_order sorts a batch by length,
    so a strided share gives every rank the same mix of lengths and about the same work), then cuts that share into
    grad_accum contiguous micro-batches (neighbours in length: little padding). Empty micro-batches (a short last batch
    of an epoch) are dropped; a rank left with none gets empty_batch."""
    for idx in order:
        share = list(idx)[rank::world]
        parts = [share[i * len(share) // grad_accum:(i + 1) * len(share) // grad_accum] for i in range(grad_accum)]
        examples = [[encoded[i] for i in p] for p in parts if p]
        yield ([pack(e, pad_id, max_length) if packing else collate(e, pad_id) for e in examples]
               or [empty_batch(pad_id)])


def batch_order(lengths: Sequence[int], batch_size: int, seed: int, steps: int | None = None,
                epochs: float | None = None, tokens: int | None = None) -> list[list[int]]:
    """Indices of each optimizer step's batch, for exactly one of the three budgets.

    Each epoch is a fresh seeded permutation; within windows of 64 batches the examples are sorted by length so that a
    batch pads little, then the batches are shuffled again (length-grouped batching). The order depends only on the
    seed and the data, never on the method, so full FT and LoRA see the same batches in the same order.
    A `tokens` budget counts every (non-pad) token a step trains on: compute, not just supervised tokens.
    """
    if sum(x is not None for x in (steps, epochs, tokens)) != 1:
        raise ValueError("give exactly one budget: steps, epochs or tokens")
    n = len(lengths)
    if n == 0:
        raise ValueError("no training examples")
    rng = np.random.default_rng(seed)
    window = 64 * batch_size
    out: list[list[int]] = []
    seen_tokens = 0
    epoch = 0
    while True:
        perm = rng.permutation(n)
        epoch_batches = []
        for start in range(0, n, window):
            chunk = sorted(perm[start:start + window].tolist(), key=lambda i: lengths[i])
            epoch_batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
        for k in rng.permutation(len(epoch_batches)):
            if steps is not None and len(out) >= steps:
                return out
            if tokens is not None and seen_tokens >= tokens:
                return out
            out.append(epoch_batches[k])
            seen_tokens += sum(lengths[i] for i in epoch_batches[k])
        epoch += 1
        if epochs is not None and epoch >= epochs:
            # a fractional last epoch: cut to round(epochs * batches per epoch)
            return out[: round(epochs * len(epoch_batches))]


def lr_at(step: int, total: int, lr: float, schedule: str, warmup: float) -> float:
    """Linear warm-up over `warmup` of the steps, then `schedule` down to lr/10 (cosine, linear) or flat (constant)."""
    n_warm = int(warmup * total)
    if step < n_warm:
        return lr * (step + 1) / n_warm
    if schedule == "constant":
        return lr
    progress = (step - n_warm) / max(1, total - n_warm)
    floor = lr / 10  # min lr ~= lr/10, as in Chinchilla-style schedules
    if schedule == "linear":
        return floor + (lr - floor) * (1 - progress)
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def label_loss(model, batch: Batch) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over positions whose next token has a label, and how many there were."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = core.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             position_ids=batch.position_ids, use_cache=False).last_hidden_state
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, batch.select)
    logits = core.get_output_embeddings()(h).float()
    return F.cross_entropy(logits, batch.targets, reduction="sum"), batch.n_label_tokens


class LabelLoss(torch.nn.Module):
    """label_loss as a module's forward: DistributedDataParallel syncs gradients only of work done through its
    wrapped module's forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, int]:
        return label_loss(self.model, batch)


def autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """bf16 autocast where the hardware does bf16 (CUDA with bf16, or a CPU with AVX512-BF16/AMX), else fp32."""
    if precision == "fp32":
        return None
    if device.startswith("cuda"):
        ok = torch.cuda.is_bf16_supported()
    else:
        ok = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if precision == "bf16" and not ok:
        raise RuntimeError(f"precision bf16 asked for, but this {device} does not support bf16")
    return torch.bfloat16 if ok else None


def attention_for(attention: str, device: str) -> str:
    """'auto' picks eager attention on CPU: for SFT-length sequences (~30-250 tokens) it trains 1.2-1.9x faster there
    than SDPA, whose CPU backward dominates the step (measured by `harness bench`); SDPA on GPUs."""
    if attention != "auto":
        return attention
    return "sdpa" if device.startswith("cuda") else "eager"


def adamw(params, lr: float, weight_decay: float = 0.0, fused: bool = True) -> torch.optim.AdamW:
    """The harness's optimizer, also handed to TRL by `harness bench`: fused AdamW (one kernel per parameter, on CPU
    and GPU alike, as TRL's own default `adamw_torch_fused`); the per-parameter loop PyTorch otherwise picks on CPU
    spent ~9% of a tiny-model step in the optimizer (torch.profiler)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95), fused=fused or None)


@dataclass
class StepRecord:
    step: int
    loss: float
    lr: float
    tokens: int
    label_tokens: int
    seconds: float


def optimize(model, batches: Iterator[Batch | Sequence[Batch]], total_steps: int, lr: float,
             schedule: str = "cosine", warmup: float = 0.1, weight_decay: float = 0.0, grad_clip: float = 1.0,
             precision: str = "auto", device: str = "cpu", on_step: Callable[[StepRecord, int], None] | None = None,
             sync_every: int = 10, fused: bool = True, strategy: str = "ddp") -> list[StepRecord]:
    """The one training loop: AdamW, warm-up + decay, gradient clipping, bf16 autocast, a NaN/inf stop.

    A step is one Batch or a list of micro-batches (gradient accumulation: `step_batches`). Under torch.distributed
    (one process per device, started by torchrun) each process passes its share of the step and the model trains as
    DistributedDataParallel (`strategy` ddp) or sharded by FSDP2 (fsdp: distributed.shard). Either way each micro-batch's summed token loss is divided by the response tokens of the
    whole step (all micro-batches, all processes: one all-reduce of the count), so the gradient is that of one batch.
    Losses stay on the device and are read back every `sync_every` steps (a .item() per step would stall a GPU
    pipeline once per step); a non-finite loss is reported with the step it first appeared at.
    """
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if dist else 1
    dtype = autocast_dtype(precision, device)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    model.train()
    sharded = dist and strategy == "fsdp"
    if sharded:
        from harness.train.distributed import shard

        net = shard(LabelLoss(model), model, device, dtype)
    elif dist:  # gradients as views into DDP's all-reduce buckets: no second copy of them (4 bytes/param in fp32)
        net = torch.nn.parallel.DistributedDataParallel(LabelLoss(model), gradient_as_bucket_view=True)
    else:
        net = LabelLoss(model)
    params = [p for p in model.parameters() if p.requires_grad]  # after sharding: this process's shards
    opt = adamw(params, lr, weight_decay, fused)
    curve: list[StepRecord] = []
    pending: list[tuple[int, torch.Tensor, float, torch.Tensor]] = []
    t0 = time.perf_counter()

    def flush() -> None:
        losses = torch.stack([p[1] for p in pending])
        if dist:  # each process holds its share of the step's loss
            torch.distributed.all_reduce(losses)
        counts = torch.stack([p[3] for p in pending]).tolist()
        elapsed = time.perf_counter() - t0
        for (step, _, rate, _), value, (n_lab, n_tok) in zip(pending, losses.tolist(), counts):
            if not math.isfinite(value):
                raise TrainingDiverged(f"loss became {value} at step {step}; lower the learning rate (lr={lr}) "
                                       f"or check the data")
            curve.append(StepRecord(step, value, rate, n_tok, n_lab, elapsed))
            if on_step:
                on_step(curve[-1], total_steps)
        pending.clear()

    for step, micro in enumerate(batches):
        if step >= total_steps:
            break
        rate = lr_at(step, total_steps, lr, schedule, warmup)
        for group in opt.param_groups:
            group["lr"] = rate
        micro = [b.to(device) for b in (micro if isinstance(micro, (list, tuple)) else [micro])]
        counts = torch.tensor([sum(b.n_label_tokens for b in micro), sum(b.n_tokens for b in micro)])
        if dist:  # the step's counts over all processes; on the device, where nccl reduces (a CPU scalar otherwise)
            counts = counts.to(device, non_blocking=True)
            torch.distributed.all_reduce(counts)
        n_labels = counts[0].clamp(min=1)
        step_loss = 0
        for k, batch in enumerate(micro):
            # DDP all-reduces gradients in the backward of a process's last micro-batch only; FSDP reduce-scatters
            # in every backward: skipping that would keep a whole unsharded gradient per process between micro-batches
            with net.no_sync() if dist and not sharded and k < len(micro) - 1 else contextlib.nullcontext():
                with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    loss_sum, _ = net(batch)
                # DDP and FSDP average gradients over the processes: x world turns that into the sum over the batch
                loss = (loss_sum * world if dist else loss_sum) / n_labels
                loss.backward()
            step_loss = step_loss + loss.detach()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        pending.append((step, step_loss / world, rate, counts))
        if len(pending) >= sync_every:
            flush()
    if pending:
        flush()
    return curve
