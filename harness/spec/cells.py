"""Cells: a matrix expanded into the runs it names, each with a content-addressed id."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from harness import DATA_VERSION, __version__
from harness.core.ids import stable_hash
from harness.spec.matrix import Budget, Eval, Matrix, Method, Train


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
ADDED_KEYS = {"train": {"grad_accum": 1, "devices": 1, "too_long": "truncate", "loss_on": "all",
                        "strategy": "ddp"}}
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
