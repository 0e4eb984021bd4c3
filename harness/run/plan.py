"""Plan state: the cells of a matrix, which are finished, and the jobs for the rest."""

from __future__ import annotations

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
