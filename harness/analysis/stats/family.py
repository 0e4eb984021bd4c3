"""The primary family: the comparisons that answer the question a matrix was built for (spec.Analysis), known from
the matrix spec before anything runs (`harness matrix plan`) and from its runs (the stat tables, the report).

Holm controls the family-wise error of a family of m tests at alpha by testing the smallest p-value at alpha / m: with
every per-task metric of the demo in the family (9 metrics x 9 contrasts = 81), full FT curated vs bulk (+0.144 learn,
p = 0.0009) needed p < 0.05 / 81 = 0.0006. The default family is the aggregates learn and forget over the contrasts the
matrix was built for (the demo: 2 x 7 = 14, so p < 0.05 / 14 = 0.0036); the rest is reported as exploratory, with a
Benjamini-Hochberg false discovery rate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from harness.analysis.stats.scores import arm_role
from harness.spec import Analysis, Matrix


@dataclass(frozen=True)
class ArmInfo:
    role: str  # scores.arm_role: curated, random control, length-matched random, longest, bulk
    like: str | None  # the arm it was made for ({random: {like: ARM}}), else None
    dose: bool  # the source as is or a plain random subset of it: one point of a dose-response series
    source: str  # what it was drawn from (dose points of one source form a series)


def _info(steps: list, like: str | None, source: str) -> ArmInfo:
    plain = not steps or (len(steps) == 1 and steps[0][0] == "random" and like is None and "match" not in steps[0][1])
    return ArmInfo(arm_role({"steps": steps}), like, plain, source)


def arms_from_spec(m: Matrix) -> dict[str, ArmInfo]:
    from harness.data import curate

    out = {}
    for name, arm in m.arms.items():
        steps = [list(curate.parse_step(s)) for s in arm.steps]
        like = next((p["like"] for _, p in steps if "like" in p), None)
        out[name] = _info(steps, like, arm.source)
    return out


def arms_from_runs(runs: pd.DataFrame) -> dict[str, ArmInfo]:
    sft = runs[runs["kind"] == "sft"].drop_duplicates("arm")
    arm_of = dict(zip(sft["dataset_id"], sft["arm"]))
    out = {}
    for arm, recipe in zip(sft["arm"], sft["recipe"]):
        r = json.loads(recipe) if isinstance(recipe, str) else recipe or {}
        steps = r.get("steps") or []
        like = next((arm_of.get(p["like_dataset"], p["like_dataset"]) if "like_dataset" in p else p["like"]
                     for _, p in steps if "like_dataset" in p or "like" in p), None)
        out[arm] = _info(steps, like, json.dumps(r.get("source"), sort_keys=True))
    return out


def controls(arms: dict[str, ArmInfo], curated: str) -> list[str]:
    """A curated arm's controls: the arms made for it (same-size and length-matched random subsets) and the arms
    made for no arm that are not curated themselves (bulk at every size, the longest responses)."""
    return [a for a, i in arms.items() if a != curated and i.role != "curated" and i.like in (curated, None)]


@dataclass(frozen=True)
class Family:
    metrics: tuple[str, ...]
    arm_pairs: frozenset  # frozenset({a, b}) compared within each method
    method_pairs: frozenset  # frozenset({a, b}) compared within each arm
    parts: tuple[tuple[str, int], ...]  # (what, contrasts per model) in words

    def primary(self, kind: str, a: str, b: str, metric: str) -> bool:
        """Is this comparison (kind 'arms': arms a vs b; 'methods': methods a vs b) on `metric` in the family?"""
        return metric in self.metrics and frozenset((a, b)) in (self.arm_pairs if kind == "arms" else
                                                                self.method_pairs)

    def size(self, n_models: int = 1) -> int:
        return n_models * len(self.metrics) * sum(n for _, n in self.parts)

    def describe(self, n_models: int = 1, size: int | None = None) -> str:
        """One line: the family, its size and how it is corrected (size: the count actually compared, if known)."""
        n = self.size(n_models) if size is None else size
        contrasts = sum(k for _, k in self.parts)
        parts = "; ".join(f"{what}: {k}" for what, k in self.parts if k) or "none"
        models = f" x {n_models} models" if n_models > 1 else ""
        k = len(self.metrics)
        return (f"primary family: {n} comparisons = {k} metric{'s' * (k > 1)} ({', '.join(self.metrics)}) x "
                f"{contrasts} contrasts ({parts}){models}; Holm-corrected (family-wise error <= alpha). "
                f"Every other comparison is exploratory: Benjamini-Hochberg (false discovery rate)")


def primary_family(analysis: Analysis, arms: dict[str, ArmInfo], methods: dict[str, str]) -> Family:
    """The primary family of a matrix with these arms and methods (label -> kind: full | lora)."""
    arm_pairs, method_pairs, parts = set(), set(), []
    named_arms, named_methods = set(), set()
    for c in analysis.contrasts:
        if c == "curated-vs-controls":
            new = {frozenset((cur, x)) for cur, i in arms.items() if i.role == "curated" for x in controls(arms, cur)}
            arm_pairs |= new
            parts.append(("curated vs its controls, per method", len(new) * len(methods)))
        elif c == "full-vs-lora":
            ms = list(methods)
            new = {frozenset((a, b)) for i, a in enumerate(ms) for b in ms[i + 1:] if methods[a] != methods[b]}
            method_pairs |= new
            parts.append(("full vs LoRA, per arm", len(new) * len(arms)))
        else:
            a, b = (x.strip() for x in c.split(" vs "))
            if a in arms and b in arms:
                named_arms.add(frozenset((a, b)))
            elif a in methods and b in methods:
                named_methods.add(frozenset((a, b)))
    for named, pairs, per, n in ((named_arms, arm_pairs, "method", len(methods)),
                                 (named_methods, method_pairs, "arm", len(arms))):
        if named:
            what = " vs ".join(sorted(next(iter(named)))) if len(named) == 1 else f"{len(named)} named pairs"
            parts.append((f"{what}, per {per}", len(named) * n))
            pairs |= named
    # a pair named twice (a keyword and by name) counts once
    n_arm, n_method = len(arm_pairs) * len(methods), len(method_pairs) * len(arms)
    if sum(n for _, n in parts) != n_arm + n_method:
        parts = [("arm pairs per method", n_arm), ("method pairs per arm", n_method)]
    return Family(tuple(analysis.metrics), frozenset(arm_pairs), frozenset(method_pairs), tuple(parts))


def of_matrix(m: Matrix) -> Family:
    return primary_family(m.analysis, arms_from_spec(m), {k: v.kind for k, v in m.methods.items()})


def of_runs(analysis: Analysis, runs: pd.DataFrame) -> Family:
    sft = runs[runs["kind"] == "sft"]
    return primary_family(analysis, arms_from_runs(runs), dict(zip(sft["method"], sft["method_kind"])))
