"""Plan state: the cells of a matrix, which are finished, and the jobs for the rest."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness import __version__, models
from harness.data.cards import short_params
from harness.data.recipe import Recipe, resolve_recipes
from harness.data.sources import validate_sources
from harness.eval.tasks import resolve_tasks, task_fingerprint
from harness.run.jobs import Job
from harness.spec import BaseEval, Cell, Matrix, SpecError, expand


@dataclass
class Plan:
    matrix: Matrix
    cells: list[Cell]
    bases: list[BaseEval]
    recipes: dict[str, Recipe]
    refs: dict[str, models.ModelRef]

    @property
    def ids(self) -> list[str]:
        return [b.id for b in self.bases] + [c.id for c in self.cells]


def plan(m: Matrix) -> Plan:
    """Resolve models, data recipes and tasks into cells; raises SpecError on anything unknown."""
    refs = {}
    for i, name in enumerate(m.models):
        try:
            refs[name] = models.resolve(name)
        except models.ModelError as e:
            raise SpecError(f"models.{i}: {e}") from None
    m = resolve_tasks(m)
    recipes = resolve_recipes(m)
    validate_sources([r.source for r in recipes.values()])  # a bad row stops here, before any model is built
    cells, bases = expand(m, {k: r.fingerprint for k, r in refs.items()}, {k: r.id for k, r in recipes.items()},
                          task_fingerprint(m.eval.learn + m.eval.forget, m.eval.include))
    return Plan(m, cells, bases, recipes, refs)


def cell_status(results: Path, run_id: str) -> str | None:
    path = results / "runs" / run_id / "result.json"
    return json.loads(path.read_text())["status"] if path.exists() else None


def finished(p: Plan, results: Path) -> set[str]:
    return {i for i in p.ids if cell_status(results, i) == "ok"}


def clean_partial(results: Path) -> None:
    """Folders a killed worker left half-written (never renamed into place)."""
    for d in list((results / "runs").glob(".*.tmp-*")) + list((results / "data").glob(".*.tmp-*")):
        shutil.rmtree(d, ignore_errors=True)


def base_job(b: BaseEval, threads: int) -> Job:
    return Job(b.id, "base", b.config(), f"base {b.model}", None, threads, __version__)


# A cell's expected time relative to a full fine-tune of the same budget. LoRA cells took ~1.4x as long as full ones
# on a 2-core CPU (the demo: the frozen base's backward still runs, plus the adapters' matmuls); run last, they left
# a worker idle at the end of the matrix.
EXPECTED_TIME = {"full": 1.0, "lora": 1.4}


def jobs_for(p: Plan, ids: set[str], threads: int) -> list[Job]:
    """Bases first (short; every cell of their model is compared with them), then the cells seed by seed (a partial
    run has every method x arm of the first seed), the longest expected first within a seed, so that the matrix
    ends on short cells and no worker waits long for the last one."""
    jobs = [base_job(b, threads) for b in p.bases if b.id in ids]
    seeds = list(dict.fromkeys(c.seed for c in p.cells))
    cells = sorted((c for c in p.cells if c.id in ids),
                   key=lambda c: (seeds.index(c.seed), -EXPECTED_TIME.get(c.method_cfg.kind, 1.0)))
    jobs += [Job(c.id, "sft", c.config(), f"{c.method}/{c.arm}/s{c.seed}", c.lr, threads, __version__) for c in cells]
    return jobs


def default_workers(p: Plan) -> int:
    """Small models run best one process per core (per-op overhead dominates); large ones share all cores."""
    small = all(r.kind == "builtin" for r in p.refs.values())
    return max(1, min(2, os.cpu_count() or 1)) if small else 1


def plan_table(p: Plan, results: Path) -> list[dict]:
    rows = [{"id": b.id, "model": b.model, "method": "base", "arm": "-", "seed": "-",
             "status": cell_status(results, b.id) or "pending"} for b in p.bases]
    rows += [{"id": c.id, "model": c.model, "method": f"{c.method} ({c.method_cfg.kind})", "arm": c.arm,
              "seed": c.seed, "status": cell_status(results, c.id) or "pending"} for c in p.cells]
    return rows


def recipe_lines(p: Plan) -> list[str]:
    out = []
    for arm, r in p.recipes.items():
        src = r.source["kind"] + (f" ({r.source['size']:,} examples)" if "size" in r.source else f" {r.source.get('path')}")
        steps = " -> ".join(n + (f"({short_params(prm)})" if prm else "") for n, prm in r.steps) or "as is"
        out.append(f"{arm}: {src} -> {steps}   [data set {r.id}]")
    return out


def model_arch(ref: models.ModelRef):
    """The shape of a model from its config alone (cost.Arch), without building, converting or loading it; None for
    a hub model not downloaded yet."""
    from transformers import AutoConfig

    from harness.train.cost import Arch

    if ref.kind == "adapter":
        return model_arch(ref.base)
    if ref.kind == "builtin":  # as pretrain builds it: one KV head per head, tied embeddings
        r = ref.recipe
        return Arch(r.vocab_size, r.hidden, r.layers, r.heads, r.hidden, r.intermediate, tied=True)
    if ref.path is None:
        return None
    path = Path(ref.path)
    if ref.kind == "gguf":  # the GGUF's metadata: no dequantizing
        return Arch.from_config(AutoConfig.from_pretrained(path.parent, gguf_file=path.name))
    return Arch.from_config(AutoConfig.from_pretrained(path, trust_remote_code=models.trust_remote_code()))


@dataclass(frozen=True)
class DeviceMemory:
    """What one cell's process may use: bytes, what kind of device, and where the figure came from."""
    bytes: int
    device: str  # "cuda" or "cpu"
    source: str

    @classmethod
    def here(cls, given_gb: float | None) -> "DeviceMemory":
        """`run.device_memory_gb` (a GPU of that size, planning for a cluster), else this machine's GPU 0, else its
        available RAM (on a CPU a cell's processes share it)."""
        if given_gb:
            return cls(int(given_gb * 2**30), "cuda", f"run.device_memory_gb {given_gb:g}")
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return cls(props.total_memory, "cuda", props.name)
        avail = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemAvailable:"))
        return cls(avail, "cpu", "available RAM")


@dataclass(frozen=True)
class CellMemory:
    cell: object  # spec.Cell
    estimate: object  # cost.MemoryEstimate: one process
    need: int  # bytes of the device (a GPU), or of the machine's RAM for all of a CPU cell's processes
    where: DeviceMemory

    @property
    def fits(self) -> bool:
        return self.need <= self.where.bytes


def _bf16(precision: str, device: str) -> bool:
    if device == "cuda":  # planning for GPUs from anywhere: auto means bf16 (every GPU since Ampere has it)
        return precision != "fp32"
    from harness.train.sft import autocast_dtype

    return autocast_dtype(precision, "cpu") is not None


def memory_plan(p: Plan, where: DeviceMemory) -> list[CellMemory]:
    """Each cell's estimated peak per device (harness.train.cost.memory_estimate) against `where`."""
    from harness.train.cost import memory_estimate

    arches = {name: model_arch(ref) for name, ref in p.refs.items()}
    out = []
    for c in p.cells:
        arch = arches[c.model]
        if arch is None:
            continue
        train = dataclasses.asdict(c.train)
        est = memory_estimate(arch, dataclasses.asdict(c.method_cfg), train, where.device,
                              _bf16(c.train.precision, where.device))
        # on a CPU every process of the cell, and the worker's own copy of the model while they train, share the RAM
        need = est.total if where.device == "cuda" else \
            c.train.devices * est.total + (4 * arch.params if c.train.devices > 1 else 0)
        out.append(CellMemory(c, est, need, where))
    return out


def refusal(m: CellMemory, others: int) -> str:
    """One line: the cell that cannot fit and the ways out."""
    c, where, gib = m.cell, m.where, 2**30
    t = c.train
    per = "per device" if where.device == "cuda" else f"for its {t.devices} process(es)"
    ways = [f"more devices (train.devices: {t.devices * 2})"]
    if t.strategy != "fsdp" and c.method_cfg.kind == "full":
        ways.append("train.strategy: fsdp")
    if c.method_cfg.kind == "full":
        ways.append("a LoRA method")
    if not t.gradient_checkpointing:
        ways.append("train.gradient_checkpointing: true")
    rows = t.batch_size // (t.devices * t.grad_accum)
    if rows > 1:
        ways.append(f"a smaller micro-batch (train.grad_accum: {t.grad_accum * 2})")
    return (f"cell {c.id} ({c.model} {c.method}/{c.arm}/s{c.seed}) needs ~{m.need / gib:.1f} GiB {per}, "
            f"{where.source} is {where.bytes / gib:.1f} GiB: ways out: {', '.join(ways)}"
            + (f" ({others} more cell(s) do not fit either)" if others else ""))


def host_memory_bytes(config: dict, gpus: bool) -> int | None:
    """RAM one job needs on its node (Slurm's --mem, Ray's memory resource). The worker holds the model (4 bytes a
    parameter); with train.devices > 1 each process also loads the whole model into RAM first (fsdp shards it from
    there). On GPUs the training happens in device memory; without them each process's training peak is in RAM.
    + 0.5 GiB for evaluation's batches. None when the model's shape is unknown."""
    from harness.train.cost import GIB, RUNTIME_BYTES, memory_estimate

    arch = model_arch(models.resolve(config["model"]))
    if arch is None:
        return None
    loaded = 4 * arch.params + RUNTIME_BYTES["cpu"]
    if "train" not in config:  # a base model's evaluation
        return loaded + GIB // 2
    t = config["train"]
    rank = loaded if gpus else max(loaded, memory_estimate(arch, config["method_cfg"], t, "cpu",
                                                           _bf16(t["precision"], "cpu")).total)
    return (loaded + t["devices"] * rank if t["devices"] > 1 else rank) + GIB // 2


def jobs_memory_bytes(jobs: list[Job], gpus: bool) -> int | None:
    """The most RAM any of `jobs` needs (host_memory_bytes); None when a model's shape is unknown."""
    need = [host_memory_bytes(j.config, gpus) for j in jobs]
    return None if None in need else max(need, default=None)
