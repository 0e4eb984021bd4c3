"""Loading a matrix: a file or a built-in preset, parsed, its `sizes` expanded, checked beyond types, and its
relative paths resolved against the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from harness.spec.matrix import CONTRASTS, Matrix
from harness.spec.validate import Ctx, SpecError, convert, read_yaml

PRESETS_DIR = Path(__file__).resolve().parent.parent / "matrices"  # built-in matrices, named by file stem
DEMO_MATRIX = PRESETS_DIR / "demo.yaml"


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
    _check_analysis(m, ctx)
    return m


def size_label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _expand_sizes(arms: dict, ctx: Ctx) -> dict:
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


def _check_steps(m: Matrix, ctx: Ctx) -> None:
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


def _check_analysis(m: Matrix, ctx: Ctx) -> None:
    """The primary family names metrics the matrix evaluates and arms or methods it has."""
    a = m.analysis
    tasks = m.eval.learn + m.eval.forget
    named = not any(t.endswith((".yaml", ".yml")) for t in tasks)  # a task file's name is known only once loaded
    known = ["learn", "forget", *tasks]
    for key, names in (("metrics", a.metrics), ("exchange", [a.exchange] if a.exchange else [])):
        for i, x in enumerate(names):
            if named and x not in known:
                ctx.fail(("analysis", key, i) if key == "metrics" else ("analysis", key),
                         f"unknown metric {x!r}; expected one of {', '.join(known)}")
    if not a.metrics:
        ctx.fail(("analysis", "metrics"), "must not be empty (the primary family needs a metric)")
    for i, c in enumerate(a.contrasts):
        if c in CONTRASTS:
            continue
        pair = [x.strip() for x in c.split(" vs ")]
        if len(pair) != 2 or pair[0] == pair[1] or not (all(x in m.arms for x in pair) or
                                                        all(x in m.methods for x in pair)):
            ctx.fail(("analysis", "contrasts", i),
                     f"expected {' or '.join(CONTRASTS)} or 'A vs B' naming two arms ({', '.join(m.arms)}) or two "
                     f"methods ({', '.join(m.methods)}), got {c!r}")


def _check(m: Matrix, ctx: Ctx) -> None:
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
