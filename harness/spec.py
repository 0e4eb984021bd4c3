"""The matrix spec: YAML -> typed dataclasses -> cells, each with a content-addressed id.

Every default lives in the dataclasses below (with the reason for its value). `harness matrix defaults` prints them.
A bad file raises SpecError naming the file, the line and the key path, and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from harness import DATA_VERSION, __version__
from harness.core.ids import stable_hash

PRESETS_DIR = Path(__file__).resolve().parent / "matrices"  # built-in matrices, named by file stem
DEMO_MATRIX = PRESETS_DIR / "demo.yaml"


class SpecError(ValueError):
    """A one-line, user-facing description of what is wrong with an input file."""


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
    max_length: int = 256  # tokens; longer examples are truncated (counted in the result)
    lr: float = 1e-3  # right for the ~1M-parameter tiny base (full FT and LoRA); use ~2e-5 (full) for 100M+
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
    devices: int = 1  # GPUs of one node training the cell data-parallel (DDP through torchrun; gloo on a CPU)


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


# ---------------------------------------------------------------------------------------------------------------
# YAML with line numbers, and a small typed validator over the dataclasses.


def _lines(node, path=()) -> dict[tuple, int]:
    """Map each key path of a composed YAML node to its 1-based line."""
    out = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            out.update(_lines(v, path + (k.value,)))
            out[path + (k.value,)] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.update(_lines(v, path + (i,)))
    return out


class _Ctx:
    def __init__(self, file: str, lines: dict[tuple, int]):
        self.file, self.lines = file, lines

    def fail(self, path: tuple, msg: str) -> typing.NoReturn:
        line = next((self.lines[path[:i]] for i in range(len(path), -1, -1) if path[:i] in self.lines), None)
        where = f"{self.file}:{line}" if line else self.file
        key = ".".join(map(str, path)) or "(top level)"
        raise SpecError(f"{where}: {key}: {msg}")


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None)) + " (or null)" \
            if type(None) in typing.get_args(tp) else " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of names to {_type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
            Any: "anything"}.get(tp, str(tp))


def _convert(value, tp, path: tuple, ctx: _Ctx):
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            ctx.fail(path, f"expected {_type_name(tp)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path, ctx)
            except SpecError:
                continue
        ctx.fail(path, f"expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            ctx.fail(path, f"expected {_type_name(tp)}, got {value!r}")
        names = {f.name: f for f in dataclasses.fields(tp)}
        hints = typing.get_type_hints(tp)
        for k in value:
            if k not in names:
                ctx.fail(path + (k,), f"unknown key; expected one of {', '.join(names)}")
        return tp(**{k: _convert(v, hints[k], path + (k,), ctx) for k, v in value.items()})
    if origin is list:
        if not isinstance(value, list):
            ctx.fail(path, f"expected {_type_name(tp)}, got {value!r}")
        return [_convert(v, typing.get_args(tp)[0], path + (i,), ctx) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            ctx.fail(path, f"expected {_type_name(tp)}, got {value!r}")
        return {str(k): _convert(v, typing.get_args(tp)[1], path + (k,), ctx) for k, v in value.items()}
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    ctx.fail(path, f"expected {_type_name(tp)}, got {value!r}")


def read_yaml(text: str, file: str) -> tuple[Any, _Ctx]:
    """The parsed YAML and a context whose fail() names the file, line and key path (for any typed input file)."""
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark else file
        raise SpecError(f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    return raw, _Ctx(file, _lines(node) if node is not None else {})


def convert(raw, tp, ctx: _Ctx):
    """`raw` checked against the dataclass `tp` (unknown keys and wrong types fail with the file:line:key)."""
    return _convert(raw, tp, (), ctx)


def parse_matrix(text: str, file: str = "<matrix>") -> Matrix:
    raw, ctx = read_yaml(text, file)
    if raw is None:
        ctx.fail((), "the file is empty; expected a mapping with keys " + ", ".join(
            f.name for f in dataclasses.fields(Matrix)))
    if isinstance(raw, dict) and isinstance(raw.get("methods"), dict):
        # a method's kind defaults to its label when the label is a kind ("full:", "lora:")
        raw["methods"] = {k: ({"kind": k} if k in ("full", "lora") else {}) | (v or {})
                          if isinstance(v, dict) or v is None else v for k, v in raw["methods"].items()}
    if isinstance(raw, dict) and isinstance(raw.get("arms"), dict):
        raw["arms"] = _expand_sizes({k: {} if v is None else v for k, v in raw["arms"].items()}, ctx)
    m: Matrix = convert(raw, Matrix, ctx)
    _check(m, ctx)
    _check_steps(m, ctx)
    return m


def size_label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _expand_sizes(arms: dict, ctx: _Ctx) -> dict:
    """An arm with `sizes: [1000, 4000, 16000]` becomes one arm per size, NAME-1k, NAME-4k, ...: its steps then a
    seeded random subset of that size (a dose-response series in one line). Other arms are left as they are."""
    out = {}
    for name, arm in arms.items():
        if not isinstance(arm, dict) or "sizes" not in arm:
            out[name] = arm
            continue
        sizes = arm["sizes"]
        if not isinstance(sizes, list) or not sizes or not all(
                isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
            ctx.fail(("arms", name, "sizes"), f"expected a list of positive integers, got {sizes!r}")
        rest = {k: v for k, v in arm.items() if k != "sizes"}
        for n in sizes:
            label = f"{name}-{size_label(n)}"
            if label in arms or label in out:
                ctx.fail(("arms", name, "sizes"), f"arm {label!r} already exists")
            out[label] = {**rest, "steps": [*(rest.get("steps") or []), {"random": n}]}
            ctx.lines.update({("arms", label, *k[2:]): v for k, v in list(ctx.lines.items())
                              if k[:2] == ("arms", name)})  # errors in an expanded arm point at its lines
    return out


def _check_steps(m: Matrix, ctx: _Ctx) -> None:
    """Every curation step's name, keys and data-free values, and the arms `like` names, with file and line."""
    from harness.data import curate  # lazy: a bare parse needs no curation code until a matrix has steps

    for arm, a in m.arms.items():
        for i, raw in enumerate(a.steps):
            try:
                name, params = curate.parse_step(raw)
            except curate.StepError as e:
                ctx.fail(("arms", arm, "steps", i, *e.path), str(e))
            if "like" in params and params["like"] not in m.arms:
                ctx.fail(("arms", arm, "steps", i, "like"),
                         f"unknown arm {params['like']!r}; expected one of {', '.join(m.arms)}")


def _check(m: Matrix, ctx: _Ctx) -> None:
    """Rules that types alone do not express."""
    if sum(x is not None for x in dataclasses.astuple(m.budget)) != 1:
        ctx.fail(("budget",), "expected exactly one of steps, tokens, epochs")
    for key in ("models", "seeds", "methods", "arms"):
        if not getattr(m, key):
            ctx.fail((key,), "must not be empty")
    for k in ("batch_size", "max_length", "grad_accum", "devices"):
        if getattr(m.train, k) <= 0:
            ctx.fail(("train", k), f"expected a positive integer, got {getattr(m.train, k)}")
    split = m.train.devices * m.train.grad_accum
    if m.train.batch_size % split:
        ctx.fail(("train", "batch_size"), f"expected a multiple of devices x grad_accum = {split} (batch_size is the "
                                          f"global batch, split into equal micro-batches), got {m.train.batch_size}")
    if m.train.lr <= 0 or not 0 <= m.train.warmup < 1:
        ctx.fail(("train",), "expected lr > 0 and 0 <= warmup < 1")
    for name, method in m.methods.items():
        if method.kind == "lora" and (method.r <= 0 or method.alpha <= 0):
            ctx.fail(("methods", name), "expected LoRA r > 0 and alpha > 0")
    if not m.eval.learn and not m.eval.forget:
        ctx.fail(("eval",), "expected at least one learn or forget task")
    for k in ("workers", "gpus", "retries"):
        if (getattr(m.run, k) or 0) < 0:
            ctx.fail(("run", k), "expected an integer >= 0")
    if m.run.time_minutes <= 0:
        ctx.fail(("run", "time_minutes"), "expected a positive integer")


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_matrix(path: str | Path | None) -> Matrix:
    """A matrix YAML file, or the name of a built-in preset (`demo`, `smollm2`, ...) when no such file exists."""
    path = Path(path) if path else DEMO_MATRIX
    if not path.exists() and path.parent == Path(".") and not path.suffix and (PRESETS_DIR / f"{path}.yaml").exists():
        path = PRESETS_DIR / f"{path}.yaml"
    if not path.exists():
        raise SpecError(f"{path}: file not found (expected a matrix YAML or a built-in preset: "
                        f"{', '.join(presets())})")
    return resolve_paths(parse_matrix(path.read_text(), str(path)), path.resolve().parent)


def resolve_paths(m: Matrix, base: Path) -> Matrix:
    """Relative data paths (an arm's .jsonl or data set folder, a source's `path`) are relative to the matrix file."""
    def local(p: str) -> bool:  # a named source wins over a folder of the same name
        return p not in m.sources and not Path(p).is_absolute() and (p.endswith((".jsonl", ".json"))
                                                                      or (base / p).is_dir())

    arms = {k: dataclasses.replace(a, source=str(base / a.source)) if local(a.source) else a
            for k, a in m.arms.items()}
    sources = {k: {**v, "path": str(base / v["path"])} if isinstance(v.get("path"), str)
               and not Path(v["path"]).is_absolute() else v for k, v in m.sources.items()}
    # task YAML paths and include folders too
    def task(t: str) -> str:
        return str(base / t) if t.endswith((".yaml", ".yml")) and not Path(t).is_absolute() else t

    ev = dataclasses.replace(m.eval, learn=[task(t) for t in m.eval.learn], forget=[task(t) for t in m.eval.forget],
                             include=[str(base / d) for d in m.eval.include])
    return dataclasses.replace(m, arms=arms, sources=sources, eval=ev)


# ---------------------------------------------------------------------------------------------------------------
# Cells.


@dataclass(frozen=True)
class Cell:
    id: str
    matrix: str
    model: str
    model_fingerprint: str
    method: str  # label
    method_cfg: Method
    arm: str
    dataset_id: str
    seed: int
    budget: Budget
    train: Train
    eval: Eval
    keep_weights: bool
    base_id: str  # the base evaluation's id

    def config(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("id", "matrix")}

    @property
    def lr(self) -> float:
        return self.train.lr if self.method_cfg.lr is None else self.method_cfg.lr


@dataclass(frozen=True)
class BaseEval:
    """The untrained model on the same tasks: evaluated once, shared by every cell of that model."""
    id: str
    model: str
    model_fingerprint: str
    eval: Eval
    precision: str

    def config(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "id"}


# Keys added after cell ids were first published, with their defaults: left out of the id payload while at their
# default, so a config that does not use them keeps its id (and its finished cells).
ADDED_KEYS = {"train": {"grad_accum": 1, "devices": 1}}
# Never in an id: where included tasks live (the task fingerprint covers their content), so a matrix or task folder
# moved elsewhere keeps its ids.
NOT_IN_ID = {"eval": {"include"}}


def identity(config: dict) -> dict:
    """A config as its id sees it: added keys at their default and NOT_IN_ID keys left out (also what `harness
    check` compares, so a baseline written before a key existed matches a candidate that leaves it at its default)."""
    return {k: {kk: vv for kk, vv in v.items()
                if ADDED_KEYS.get(k, {}).get(kk, object()) != vv and kk not in NOT_IN_ID.get(k, ())}
            if isinstance(v, dict) and (k in ADDED_KEYS or k in NOT_IN_ID) else v for k, v in config.items()}


def content_id(payload: dict) -> str:
    """12 hex digits of a hash over the resolved config and the harness/data versions."""
    blob = json.dumps(identity(payload), sort_keys=True, default=str)
    return f"{stable_hash(blob, __version__, DATA_VERSION):016x}"[:12]


def base_eval(model: str, fingerprint: str, ev: Eval, precision: str, task_fingerprint: str) -> BaseEval:
    """The untrained model's evaluation (a matrix's, or `harness eval`'s), its id over all that decides its scores."""
    payload = {"model": model, "fp": fingerprint, "eval": dataclasses.asdict(ev), "tasks": task_fingerprint,
               "precision": precision}
    return BaseEval(content_id(payload), model, fingerprint, ev, precision)


def expand(m: Matrix, model_fingerprints: dict[str, str], dataset_ids: dict[str, str],
           task_fingerprint: str) -> tuple[list[Cell], list[BaseEval]]:
    """Cells in run order: seed-major, so a partial run already has every method x arm for the first seed."""
    bases = {model: base_eval(model, model_fingerprints[model], m.eval, m.train.precision, task_fingerprint)
             for model in m.models}
    cells = []
    for seed in m.seeds:
        for model in m.models:
            for method, mcfg in m.methods.items():
                for arm in m.arms:
                    keep = m.keep_weights == "all" or (m.keep_weights == "lora" and mcfg.kind == "lora")
                    cell = Cell("", m.name, model, model_fingerprints[model], method, mcfg, arm, dataset_ids[arm],
                                seed, m.budget, m.train, m.eval, keep, bases[model].id)
                    payload = cell.config() | {"tasks": task_fingerprint}
                    cells.append(dataclasses.replace(cell, id=content_id(payload)))
    return cells, list(bases.values())


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
             f"{split}; max length {m.train.max_length}; precision {m.train.precision}",
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
