"""Curation steps: each takes rows and returns the rows it keeps plus a reason for every row it drops.

A step is a plain function `step(rows, params, ctx) -> Step`; STEPS maps recipe names to them. Every decision is
recorded (data_decisions in the database), so "what did the filter throw away?" is one query.
"""

from __future__ import annotations

import random
import re
import statistics
import unicodedata
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from harness import world


class RecipeError(ValueError):
    pass


@dataclass
class Step:
    kept: list[dict]
    dropped: list[tuple[str, str, float | None]] = field(default_factory=list)  # (example id, reason, score)
    score_stats: dict | None = None


@dataclass
class Context:
    seed: int
    sizes: dict[str, int]  # dataset sizes of other arms, for {random: {like: arm}}


def normalise(text: str) -> str:
    """Lower case, accents and punctuation removed, whitespace collapsed: exact duplicates up to formatting."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


# MinHash over character 5-grams: 64 hash functions in 16 bands of 4 rows. Two texts with Jaccard similarity s
# share a band with probability 1 - (1 - s^4)^16: 0.99 at s=0.6, 0.48 at s=0.4, 0.04 at s=0.2; candidates are then
# checked against the exact Jaccard threshold, so the bands only decide what gets compared.
# Hash functions h(x) = (a*x + b) mod p with p = 2^31 - 1 and x, a, b < p: the product stays below 2^62, inside
# uint64, and it wraps modulo p, which is what makes the minimum a random pick among the shingles.
_PRIME = (1 << 31) - 1
_N_HASH, _BANDS = 64, 16


def _shingles(text: str, k: int = 5) -> set[int]:
    t = normalise(text)
    return {world.stable_hash(t[i:i + k]) % _PRIME for i in range(max(1, len(t) - k + 1))}


def _minhash(sh: set[int], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = np.fromiter(sh, dtype=np.uint64)
    return ((np.outer(x, a) + b) % _PRIME).min(axis=0)


def dedup(rows: list[dict], params: dict, ctx: Context) -> Step:
    """Exact duplicates (same normalised prompt and response), then near duplicates by MinHash-LSH on character
    5-grams of prompt + response with Jaccard >= threshold. The first occurrence is kept."""
    threshold = float(params.get("threshold", 0.6))
    near = bool(params.get("near", True))
    kept, dropped, first = [], [], {}
    for r in rows:
        key = normalise(r["prompt"]) + "\x00" + normalise(r["response"])
        if key in first:
            dropped.append((r["id"], f"exact duplicate of {first[key]}", 1.0))
        else:
            first[key] = r["id"]
            kept.append(r)
    if not near:
        return Step(kept, dropped)
    rng = np.random.default_rng(12345)
    a = rng.integers(1, _PRIME, _N_HASH, dtype=np.uint64)
    b = rng.integers(0, _PRIME, _N_HASH, dtype=np.uint64)
    shingles = [_shingles(r["prompt"] + " || " + r["response"]) for r in kept]
    buckets: dict[tuple, list[int]] = {}
    out = []
    for i, sh in enumerate(shingles):
        sig = _minhash(sh, a, b)
        bands = [(j, sig[j * 4:(j + 1) * 4].tobytes()) for j in range(_BANDS)]
        match = None
        for band in bands:
            for other in buckets.get(band, ()):
                sim = len(sh & shingles[other]) / len(sh | shingles[other])
                if sim >= threshold:
                    match = (other, sim)
                    break
            if match:
                break
        if match:
            dropped.append((kept[i]["id"], f"near duplicate of {kept[match[0]]['id']} (jaccard {match[1]:.2f})",
                            match[1]))
            continue
        for band in bands:
            buckets.setdefault(band, []).append(i)
        out.append(kept[i])
    return Step(out, dropped)


# ---------------------------------------------------------------------------------------------------------------
# Scorers: row -> quality score in [0, 1]. Pluggable by name.


def verifier_score(row: dict) -> float:
    """1 if the skills world's verifier accepts the response, else 0."""
    if "skill" not in row or "params" not in row:
        raise RecipeError(f"example {row['id']}: the verifier scorer needs skills-world rows (skill, op, params)")
    return float(world.verify(row["skill"], row["op"], tuple(row["params"]), row["response"], _WORLD))


_WORLD = world.build_world()

SCORERS: dict[str, Callable[[dict], float]] = {"verifier": verifier_score}


def filter_(rows: list[dict], params: dict, ctx: Context) -> Step:
    """Keep rows whose score >= threshold (default 1.0 for the verifier), or the top_n by score."""
    name = params.get("scorer", "verifier")
    if name not in SCORERS:
        raise RecipeError(f"unknown scorer {name!r}; expected one of {', '.join(SCORERS)}")
    scores = [SCORERS[name](r) for r in rows]
    stats = {"scorer": name, "mean": statistics.fmean(scores) if scores else None,
             "min": min(scores, default=None), "max": max(scores, default=None)}
    if "top_n" in params:
        order = sorted(range(len(rows)), key=lambda i: -scores[i])[: int(params["top_n"])]
        keep = set(order)
    else:
        threshold = float(params.get("threshold", 1.0))
        keep = {i for i, s in enumerate(scores) if s >= threshold}
    kept = [r for i, r in enumerate(rows) if i in keep]
    dropped = [(r["id"], f"{name} score {scores[i]:.3g} below the bar", scores[i])
               for i, r in enumerate(rows) if i not in keep]
    return Step(kept, dropped, stats)


def balance(rows: list[dict], params: dict, ctx: Context) -> Step:
    """Equal numbers per skill (the `skill` field): n in total, seeded. A skill with too few rows gives all it has."""
    by_skill: dict[str, list[dict]] = {}
    for r in rows:
        by_skill.setdefault(r.get("skill", "all"), []).append(r)
    n = int(params.get("n", len(rows)))
    quota = n // len(by_skill)
    rng = random.Random(world.stable_hash("balance", ctx.seed))
    kept_ids = set()
    for skill in sorted(by_skill):
        group = by_skill[skill]
        kept_ids |= {r["id"] for r in rng.sample(group, min(quota, len(group)))}
    kept = [r for r in rows if r["id"] in kept_ids]
    dropped = [(r["id"], f"over the quota of {quota} for skill {r.get('skill', 'all')}", None)
               for r in rows if r["id"] not in kept_ids]
    return Step(kept, dropped)


def random_subset(rows: list[dict], params: dict, ctx: Context) -> Step:
    """A seeded random subset: n rows, or as many as the arm named by `like` has (the same-size control)."""
    if "like" in params:
        n = ctx.sizes[params["like"]]
    elif "n" in params:
        n = int(params["n"])
    else:
        raise RecipeError("random needs n: <count> or like: <arm>")
    if n > len(rows):
        raise RecipeError(f"random: asked for {n} examples but the source has only {len(rows)}")
    rng = random.Random(world.stable_hash("random", ctx.seed, n))
    kept_ids = {r["id"] for r in rng.sample(rows, n)}
    return Step([r for r in rows if r["id"] in kept_ids],
                [(r["id"], "not drawn by the random subset", None) for r in rows if r["id"] not in kept_ids])


STEPS: dict[str, Callable[[list[dict], dict, Context], Step]] = {
    "dedup": dedup, "filter": filter_, "balance": balance, "random": random_subset,
}
