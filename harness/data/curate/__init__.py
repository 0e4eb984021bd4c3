"""Curation steps: each takes rows and returns the rows it keeps plus a reason for every row it drops.

A step is a plain function `step(rows, params, ctx) -> Step`; STEPS maps recipe names to them and STEP_KEYS lists
the parameters each accepts (checked when a recipe is resolved, before anything runs). Every decision is recorded
(data_decisions in the database), so "what did the filter throw away?" is one query.

Steps: dedup (exact, MinHash-LSH or embedding near duplicates), filter (a pluggable scorer, kept by threshold or
top_n), balance (equal skills), random (a seeded subset: the same-size control, or with `match: length` the
length-matched control), longest (the N longest responses: the tough baseline of Zhao et al., ICML 2024, "Long Is
More for Alignment"), diversity (n examples covering the prompt space: k-center greedy or cluster-balanced over
embeddings), best_of_k (a policy samples K responses, a scorer picks the best), distill (a teacher writes the
responses) and decontaminate (rows that contain an evaluation document: see contamination.py).
"""

from __future__ import annotations

from typing import Callable

from harness.data.curate.base import ON, Context, RecipeError, Step
from harness.data.curate.contamination import decontaminate
from harness.data.curate.duplicates import dedup
from harness.data.curate.generation import GEN_KEYS, best_of_k, distill
from harness.data.curate.scorers import SCORER_KEYS, SCORERS, reward_scores
from harness.data.curate.selection import k_center
from harness.data.curate.subsets import balance, diversity, filter_, longest, random_subset

__all__ = ["Context", "RecipeError", "Step", "dedup", "filter_", "balance", "random_subset", "longest", "diversity",
           "best_of_k", "distill", "decontaminate", "reward_scores", "k_center", "SCORERS",
           "STEPS", "STEP_KEYS", "MODEL_KEYS", "MAIN_PARAM", "StepError", "parse_step"]

STEPS: dict[str, Callable[[list[dict], dict, Context], Step]] = {
    "dedup": dedup, "filter": filter_, "balance": balance, "random": random_subset, "longest": longest,
    "diversity": diversity, "best_of_k": best_of_k, "distill": distill, "decontaminate": decontaminate,
}
_ALL_SCORER_KEYS = {"scorer"} | set().union(*SCORER_KEYS.values())
STEP_KEYS: dict[str, set[str]] = {
    "dedup": {"method", "threshold", "embed", "on"}, "filter": {"threshold", "top_n"} | _ALL_SCORER_KEYS,
    "balance": {"n"}, "random": {"n", "like", "match", "by"}, "longest": {"n", "like", "by"},
    "diversity": {"n", "method", "embed", "on", "clusters"},
    "best_of_k": {"policy", "k", "threshold"} | GEN_KEYS | _ALL_SCORER_KEYS, "distill": {"teacher"} | GEN_KEYS,
    "decontaminate": {"against", "method", "n", "threshold", "embed"},
}
MODEL_KEYS = ("policy", "teacher", "model")  # parameters naming a model: their fingerprints join the recipe's id
MAIN_PARAM = {"filter": "scorer", "random": "n", "longest": "n", "balance": "n", "diversity": "n", "dedup": "method",
              "distill": "teacher", "best_of_k": "policy", "decontaminate": "against"}  # {random: 1000} means {random: {n: 1000}}


class StepError(ValueError):
    """A bad step in a recipe: `path` (within the step: (), (name,) or (name, key)) and what was expected."""

    def __init__(self, path: tuple, msg: str):
        super().__init__(msg)
        self.path = path


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


# Checks of parameter values that need no data: (step, key) -> (is it valid, what was expected)
_VALUES = {("random", "n"): (_is_count, "a positive integer"), ("longest", "n"): (_is_count, "a positive integer"),
           ("random", "like"): (lambda v: isinstance(v, str), "the name of another arm"),
           ("longest", "like"): (lambda v: isinstance(v, str), "the name of another arm"),
           ("random", "match"): (lambda v: v in ("count", "length"), "count or length"),
           ("random", "by"): (lambda v: v in ("chars", "words"), "chars or words"),
           ("longest", "by"): (lambda v: v in ("chars", "words"), "chars or words"),
           ("dedup", "on"): (lambda v: v in ON, "prompt, response or conversation"),
           ("diversity", "on"): (lambda v: v in ON, "prompt, response or conversation"),
           ("decontaminate", "against"): (lambda v: v == "eval" or isinstance(v, list) and v and all(
               isinstance(t, str) for t in v), "eval or a list of task names"),
           ("decontaminate", "method"): (lambda v: v in ("ngram", "minhash", "embedding"),
                                         "ngram, minhash or embedding"),
           ("decontaminate", "n"): (_is_count, "a positive integer (words per n-gram)"),
           ("decontaminate", "threshold"): (lambda v: isinstance(v, (int, float)) and 0 < v <= 1,
                                            "a similarity in (0, 1]")}


def parse_step(raw) -> tuple[str, dict]:
    """'dedup' | {dedup: {...}} | {random: 1000} -> (name, params), its keys and the values that need no data
    checked; raises StepError."""
    if isinstance(raw, str):
        name, params = raw, {}
    elif isinstance(raw, dict) and len(raw) == 1:
        name, params = next(iter(raw.items()))
    else:
        raise StepError((), f"expected a step name or a one-key mapping, got {raw!r}")
    if name not in STEPS:
        raise StepError((), f"unknown step {name!r}; expected one of {', '.join(STEPS)}")
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        if name not in MAIN_PARAM:
            raise StepError((name,), f"expected a mapping of parameters, got {params!r}")
        params = {MAIN_PARAM[name]: params}
    unknown = sorted(set(params) - STEP_KEYS[name])
    if unknown:
        raise StepError((name, unknown[0]), f"unknown key; expected one of {', '.join(sorted(STEP_KEYS[name]))}")
    for key, value in params.items():
        ok, expected = _VALUES.get((name, key), (None, None))
        if ok and not ok(value):
            raise StepError((name, key), f"expected {expected}, got {value!r}")
    if name in ("random", "longest") and ("n" in params) == ("like" in params):
        raise StepError((name,), "expected one of n: <count> or like: <arm>")
    if params.get("match") == "length" and "like" not in params:
        raise StepError((name, "match"), "match: length needs like: <arm> (the arm whose lengths to match)")
    scorer = params.get("scorer")
    if scorer is not None and scorer not in SCORERS:
        raise StepError((name, "scorer"), f"unknown scorer {scorer!r}; expected one of {', '.join(SCORERS)}")
    return name, params
