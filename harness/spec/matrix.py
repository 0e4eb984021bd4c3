"""The matrix's typed specs. Every default lives in these dataclasses (with the reason for its value); `harness
matrix defaults` prints them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Method:
    kind: Literal["full", "lora"] = "full"
    lr: float | None = None  # None: train.lr. For 100M+ models LoRA usually wants ~10x full FT's lr
    r: int = 16  # LoRA rank
    alpha: int = 32  # LoRA scale alpha/r = 2
    dropout: float = 0.0  # no dropout: short runs do not overfit
    target_modules: list[str] | str = "all-linear"  # every linear layer but the LM head, as in QLoRA


@dataclass(frozen=True)
class Arm:
    source: str = "skills_pool"  # a name in `sources`, a built-in source, or a path to a JSONL file
    steps: list[Any] = field(default_factory=list)  # curation steps: "dedup", {filter: verifier}, {random: {like: arm}}


@dataclass(frozen=True)
class Budget:
    steps: int | None = None  # optimizer steps per cell (the default budget: 800)
    tokens: int | None = None  # training tokens per cell (all non-pad tokens)
    epochs: float | None = None  # passes over each arm's data (matches epochs, not compute)


@dataclass(frozen=True)
class Train:
    batch_size: int = 16  # examples per optimizer step
    max_length: int = 256  # tokens of a whole row (a chat row: its whole conversation)
    too_long: Literal["truncate", "drop"] = "truncate"  # a longer row: cut at max_length keeping its start, or left
    # out of training (either way counted per cell: rows, trained tokens lost; runs and length_decisions tables)
    loss_on: Literal["all", "last"] = "all"  # chat rows: every assistant turn carries loss (TRL's assistant_only_loss,
    # axolotl's and LLaMA-Factory's default), or only the final one. A {prompt, response} row has one turn either way
    lr: float = 1e-3  # right for the 0.7M-parameter tiny base (full FT and LoRA); use ~2e-5 (full) for 100M+
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # decays to lr/10
    warmup: float = 0.1  # fraction of steps with linear warm-up
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast where the hardware has it
    attention: Literal["auto", "eager", "sdpa"] = "auto"  # auto: eager on CPU (faster for short rows), sdpa on GPU
    packing: bool = False  # padding-free rows of up to max_length tokens (same loss; see `harness bench`)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1/3 more compute
    # batch_size is the global batch: split into devices x grad_accum micro-batches of batch_size/(devices*grad_accum)
    grad_accum: int = 1  # micro-batches per device per optimizer step: a global batch larger than fits in memory
    devices: int = 1  # GPUs of one node training the cell together (torchrun; gloo on a CPU)
    # ddp: every device holds the whole model, gradients and AdamW state; fsdp: FSDP2 shards all three over the devices
    # (full fine-tuning of a model that does not fit one device; `harness matrix plan` says which cells fit)
    strategy: Literal["ddp", "fsdp"] = "ddp"


@dataclass(frozen=True)
class Eval:
    learn: list[str] = field(default_factory=lambda: ["skills_arith", "skills_words", "skills_facts",
                                                      "skills_format", "skills_unseen"])
    forget: list[str] = field(default_factory=lambda: ["world_mc", "prose_bpb"])
    limit: int | None = None  # examples per task (None: all)
    batch_size: int = 32
    include: list[str] = field(default_factory=list)  # folders of your own task YAMLs (lm-eval's include_path)


@dataclass(frozen=True)
class Run:
    """Where the cells run (`harness matrix run --executor`; README "Running on a cluster"). Never part of a cell's
    id: a cell gives the same result on every executor."""
    executor: Literal["local", "ray", "slurm"] = "local"  # HARNESS_EXECUTOR and --executor override it
    workers: int = 0  # cells at once (0: local: one per core for built-in models, else 1; ray: as the cluster fits)
    gpus: int | None = None  # GPUs per cell (ray: default 1 when the cluster has GPUs, else 0; slurm: default 0)
    address: str | None = None  # ray: a running cluster ("auto", "ray://head:10001"); none: start Ray on this machine
    retries: int = 2  # ray: reruns of a cell whose worker died (lost node, OOM, kill -9) before it is recorded failed
    partition: str | None = None  # slurm
    account: str | None = None  # slurm
    time_minutes: int = 120  # slurm: the time limit of one cell
    device_memory_gb: float | None = None  # memory of one GPU, for `harness matrix plan` (None: read from the device)


CONTRASTS = ("curated-vs-controls", "full-vs-lora")  # the contrasts named by a word (Analysis.contrasts)


@dataclass(frozen=True)
class Analysis:
    """The question the matrix was built to answer. Its primary comparisons (metrics x contrasts) are one family,
    Holm-corrected: "significant" keeps its 5% family-wise error rate however many tasks and arms the matrix has.
    Every other comparison is exploratory (Benjamini-Hochberg). Never part of a cell's id: changing it re-analyses,
    it never reruns a cell."""
    metrics: list[str] = field(default_factory=lambda: ["learn", "forget"])  # learn, forget or task names
    # curated-vs-controls: each curated arm against each of its controls (random subsets made for it, and arms made
    # for no arm: bulk sizes, longest), per method; full-vs-lora: each pair of methods of different kinds, per arm;
    # or "A vs B" naming two arms (per method) or two methods (per arm)
    contrasts: list[str] = field(default_factory=lambda: ["curated-vs-controls", "full-vs-lora"])
    # the exchange rate: the bulk examples a curated arm is worth on this metric (null: none). It needs an arm
    # with `sizes:` (plain random subsets of one source) at >= 2 sizes; 3 or more pin the fit down
    exchange: str | None = "learn"
    # the seed-to-seed noise a comparison's test counts: pooled, per metric and model, over every method and arm (the
    # residual of score ~ arm + seed: (arms - 1)(seeds - 1) degrees of freedom, 6 in the demo; assumes the arms' seed
    # noise is alike), or per-comparison (the spread of its own seeds alone: seeds - 1 df, so 2 seeds can show nothing)
    seed_noise: Literal["pooled", "per-comparison"] = "pooled"


@dataclass(frozen=True)
class Matrix:
    name: str = "matrix"
    models: list[str] = field(default_factory=lambda: ["tiny"])  # aliases (`harness models`) or local HF folders
    methods: dict[str, Method] = field(default_factory=lambda: {"full": Method(), "lora": Method(kind="lora")})
    sources: dict[str, dict] = field(default_factory=dict)  # named data sources shared by arms
    arms: dict[str, Arm] = field(default_factory=lambda: {"bulk": Arm()})
    seeds: list[int] = field(default_factory=lambda: [0])
    budget: Budget = field(default_factory=lambda: Budget(steps=800))
    train: Train = field(default_factory=Train)
    eval: Eval = field(default_factory=Eval)
    keep_weights: Literal["all", "lora", "none"] = "all"  # "lora": drop full fine-tunes' weights (large models)
    run: Run = field(default_factory=Run)
    analysis: Analysis = field(default_factory=Analysis)  # the primary family; never in a cell id


def matched_description(m: Matrix) -> list[str]:
    """What every cell of the matrix shares, in words: the basis of any comparison between them."""
    b = m.budget
    budget = (f"{b.steps} optimizer steps of {m.train.batch_size} examples" if b.steps is not None else
              f"{b.tokens:,} training tokens" if b.tokens is not None else f"{b.epochs} epochs over each arm's data")
    t = m.train
    n = t.devices * t.grad_accum
    split = f" (global: {t.devices} device(s) x {t.grad_accum} micro-batch(es) of {t.batch_size // n})" if n > 1 else ""
    lines = [f"budget: {budget} per cell",
             f"schedule: {m.train.schedule} with {m.train.warmup:.0%} warm-up, to lr/10; batch {m.train.batch_size}"
             f"{split}; max length {m.train.max_length} (longer rows "
             f"{'truncated' if m.train.too_long == 'truncate' else 'dropped'}); loss on "
             f"{'every assistant turn' if m.train.loss_on == 'all' else 'the last assistant turn'} of a chat row; "
             f"precision {m.train.precision}",
             "learning rate per method: " + ", ".join(
                 f"{k}={m.train.lr if v.lr is None else v.lr:g}" for k, v in m.methods.items()),
             f"seeds {m.seeds}: for a seed, every method sees the same batches in the same order on an arm, and "
             f"every arm is drawn with the same seed",
             f"evaluation: identical tasks for every cell and the base model (learn: {', '.join(m.eval.learn)}; "
             f"forget: {', '.join(m.eval.forget)})"]
    if b.epochs is not None:
        lines.append("NOT matched: compute (arms of different size train for different numbers of steps)")
    else:
        lines.append("NOT matched: epochs (a smaller arm is repeated more often within the same budget)")
    return lines
