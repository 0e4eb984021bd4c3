"""Steps that keep a subset of the rows as they are: filter (by a scorer), balance, random, longest, diversity."""

from __future__ import annotations

import bisect
import random

import numpy as np

from harness.core.ids import stable_hash
from harness.data.curate.base import Context, RecipeError, Step, describe, response_length, text_of
from harness.data.curate.scorers import score
from harness.data.curate.selection import cluster_balanced, k_center, nearest_chosen
from harness.data.embed import METHODS as EMBEDDINGS
from harness.data.embed import embed


def filter_(rows: list[dict], params: dict, ctx: Context) -> Step:
    """Keep rows whose score >= threshold (default 1.0: every verifier check or heuristic rule passed), or the
    top_n by score (ties broken by position)."""
    name, scores, notes = score(rows, params, ctx)
    if "top_n" in params:
        n = int(params["top_n"])
        keep = set(sorted(range(len(rows)), key=lambda i: -scores[i])[:n])
        bar = f"not in the top {n}"
    else:
        threshold = float(params.get("threshold", 1.0))
        keep = {i for i, s in enumerate(scores) if s >= threshold}
        bar = f"below {threshold:g}"
    kept = [r for i, r in enumerate(rows) if i in keep]
    dropped = [(r["id"], f"{name} score {scores[i]:.3g} {bar}" + (f": {notes[i]}" if notes and notes[i] else ""),
                scores[i]) for i, r in enumerate(rows) if i not in keep]
    return Step(kept, dropped, {"scorer": name, **(describe(scores) or {})})


def balance(rows: list[dict], params: dict, ctx: Context) -> Step:
    """Equal numbers per skill (the `skill` field): n in total, seeded. A skill with too few rows gives all it has."""
    by_skill: dict[str, list[dict]] = {}
    for r in rows:
        by_skill.setdefault(r.get("skill", "all"), []).append(r)
    n = int(params.get("n", len(rows)))
    quota = n // len(by_skill)
    rng = random.Random(stable_hash("balance", ctx.seed))
    kept_ids = set()
    for skill in sorted(by_skill):
        group = by_skill[skill]
        kept_ids |= {r["id"] for r in rng.sample(group, min(quota, len(group)))}
    kept = [r for r in rows if r["id"] in kept_ids]
    dropped = [(r["id"], f"over the quota of {quota} for skill {r.get('skill', 'all')}", None)
               for r in rows if r["id"] not in kept_ids]
    return Step(kept, dropped)


def _count(params: dict, ctx: Context, step: str) -> int:
    """`n`, or the size of the arm named by `like`."""
    if "like" in params:
        return ctx.sizes[params["like"]]
    if "n" in params:
        return int(params["n"])
    raise RecipeError(f"{step} needs n: <count> or like: <arm>")


def random_subset(rows: list[dict], params: dict, ctx: Context) -> Step:
    """A seeded random subset: n rows, or as many as the arm named by `like` has (the same-size control). With
    `match: length` (needs `like`), the length-matched control: for each of that arm's rows, in seeded random order,
    an undrawn row whose response length (`by`: chars or words) is nearest to it, the pick among equally near ones
    seeded too. The subset then has the arm's size and response-length distribution, hence about its training tokens,
    so a curated arm cannot beat it merely by being longer or shorter."""
    n = _count(params, ctx, "random")
    if n > len(rows):
        raise RecipeError(f"random: asked for {n} examples but the source has only {len(rows)}")
    if params.get("match", "count") == "count":
        rng = random.Random(stable_hash("random", ctx.seed, n))
        kept_ids = {r["id"] for r in rng.sample(rows, n)}
        return Step([r for r in rows if r["id"] in kept_ids],
                    [(r["id"], "not drawn by the random subset", None) for r in rows if r["id"] not in kept_ids])
    by = params.get("by", "chars")
    target = [response_length(r, by) for r in ctx.arms[params["like"]]]
    rng = np.random.default_rng(stable_hash("random-length", ctx.seed, n) % 2**32)
    lengths = np.array([response_length(r, by) for r in rows])
    # candidates sorted by (length, a random key): the first undrawn row at or after a length is a random one of
    # those at that length. 16k candidates x 1k picks: ~16M list moves, well under a second
    free = sorted(zip(lengths.tolist(), rng.random(len(rows)).tolist(), range(len(rows))))
    picked = []
    for want in rng.permutation(target).tolist():
        j = bisect.bisect_left(free, (want, -1.0))
        near = [k for k in (j - 1, j) if 0 <= k < len(free)]
        k = min(near, key=lambda k: (abs(free[k][0] - want), k != j))  # ties: the longer candidate
        picked.append(free.pop(k)[2])
    kept_ids = {rows[i]["id"] for i in picked}
    got = lengths[picked]
    stats = {"match": "length", "by": by, "target_total": int(sum(target)), "total": int(got.sum()),
             "target": describe(target), "kept": describe(got)}
    return Step([r for r in rows if r["id"] in kept_ids],
                [(r["id"], f"not drawn by the length-matched random subset (response {lengths[i]} {by})",
                  float(lengths[i])) for i, r in enumerate(rows) if r["id"] not in kept_ids], stats)


def longest(rows: list[dict], params: dict, ctx: Context) -> Step:
    """The n rows (or as many as the arm named by `like`) with the longest responses (`by`: chars or words); among
    equally long responses the earlier row wins, so the choice is deterministic."""
    n, by = _count(params, ctx, "longest"), params.get("by", "chars")
    lengths = [response_length(r, by) for r in rows]
    ranked = sorted(range(len(rows)), key=lambda i: (-lengths[i], i))
    keep = set(ranked[:n])
    cut = lengths[ranked[min(n, len(rows)) - 1]] if rows else 0
    dropped = [(r["id"], f"response {lengths[i]} {by}: not among the {n} longest (the shortest kept has {cut})",
                float(lengths[i])) for i, r in enumerate(rows) if i not in keep]
    return Step([r for i, r in enumerate(rows) if i in keep], dropped,
                {"by": by, "n": n, "shortest_kept": cut, "lengths": describe(lengths)})


def diversity(rows: list[dict], params: dict, ctx: Context) -> Step:
    """n rows covering the space of their texts: embeddings (`embed`: minilm, static, or tfidf without a model) of
    `on` (prompt, response or conversation; by default the whole conversation of chat rows and the prompt of
    {prompt, response} rows), selected by k-center greedy (`method: kcenter`) or cluster-balanced sampling
    (`method: clusters`, `clusters` k-means groups, default 64)."""
    if "n" not in params:
        raise RecipeError("diversity needs n: <count>")
    n, method = int(params["n"]), params.get("method", "kcenter")
    name = params.get("embed", "minilm")
    on = params.get("on", "conversation" if any(r.get("messages") for r in rows) else "prompt")
    if method not in ("kcenter", "clusters") or name not in EMBEDDINGS:
        raise RecipeError(f"diversity: expected method kcenter or clusters, embed {' or '.join(EMBEDDINGS)}; got "
                          f"{method!r}, {name!r}")
    if n >= len(rows):
        return Step(list(rows), [], {"method": method, "embed": name, "note": f"n={n} >= {len(rows)} rows: all kept"})
    x = embed([text_of(r, on) for r in rows], name, ctx.results, ctx.meter)
    if method == "kcenter":
        chosen, dist, nearest = k_center(x, n, ctx.seed)
    else:
        chosen = cluster_balanced(x, n, int(params.get("clusters", 64)), ctx.seed)
        dist, nearest = nearest_chosen(x, chosen)
    keep = set(chosen)
    dropped = [(r["id"], f"not selected by {method} ({name}): cosine distance {dist[i]:.3f} to "
                         f"{rows[nearest[i]]['id']}", float(dist[i])) for i, r in enumerate(rows) if i not in keep]
    stats = {"method": method, "embed": name, "covering_radius": float(dist.max()),
             "distance_to_selected": describe(dist)}
    return Step([r for i, r in enumerate(rows) if i in keep], dropped, stats)
