"""Curation steps: each takes rows and returns the rows it keeps plus a reason for every row it drops.

A step is a plain function `step(rows, params, ctx) -> Step`; STEPS maps recipe names to them and STEP_KEYS lists
the parameters each accepts (checked when a recipe is resolved, before anything runs). Every decision is recorded
(data_decisions in the database), so "what did the filter throw away?" is one query.

Steps: dedup (exact, MinHash-LSH or embedding near duplicates), filter (a pluggable scorer, kept by threshold or
top_n), balance (equal skills), random (a seeded subset: the same-size control, or with `match: length` the
length-matched control), longest (the N longest responses: the tough baseline of Zhao et al., ICML 2024, "Long Is
More for Alignment"), diversity (n examples covering the prompt space: k-center greedy or cluster-balanced over
embeddings), best_of_k (a policy samples K responses, a scorer picks the best) and distill (a teacher writes the
responses).
"""

from __future__ import annotations

import bisect
import random
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from harness.core.ids import stable_hash
from harness.data import generate, world
from harness.data.embed import METHODS as EMBEDDINGS
from harness.data.embed import embed


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
    arms: dict[str, list[dict]] = field(default_factory=dict)  # other arms' rows, for {random: {match: length}}
    results: Path | None = None  # where models, caches of generations and embeddings live
    meter: generate.Meter = field(default_factory=generate.Meter)  # what the current step's models cost


def describe(scores: list[float] | np.ndarray) -> dict | None:
    """A score distribution for the card and the database: mean, quantiles and a 10-bin histogram."""
    x = np.asarray(scores, dtype=float)
    if not len(x):
        return None
    counts, edges = np.histogram(x, bins=10)
    q = np.quantile(x, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"n": len(x), "mean": float(x.mean()), "min": float(x.min()), "max": float(x.max()),
            "quantiles": {k: float(v) for k, v in zip(("p10", "p25", "p50", "p75", "p90"), q)},
            "histogram": {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}}


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
    return {stable_hash(t[i:i + k]) % _PRIME for i in range(max(1, len(t) - k + 1))}


def _minhash(sh: set[int], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = np.fromiter(sh, dtype=np.uint64)
    return ((np.outer(x, a) + b) % _PRIME).min(axis=0)


def _minhash_dups(rows: list[dict], threshold: float) -> list[tuple[int, float] | None]:
    """For each row, the earlier kept row it near-duplicates (Jaccard of character 5-grams of prompt + response)."""
    rng = np.random.default_rng(12345)
    a = rng.integers(1, _PRIME, _N_HASH, dtype=np.uint64)
    b = rng.integers(0, _PRIME, _N_HASH, dtype=np.uint64)
    shingles = [_shingles(r["prompt"] + " || " + r["response"]) for r in rows]
    buckets: dict[tuple, list[int]] = {}
    out: list[tuple[int, float] | None] = []
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
        out.append(match)
        if not match:
            for band in bands:
                buckets.setdefault(band, []).append(i)
    return out


def _embedding_dups(x: np.ndarray, threshold: float, block: int = 1024) -> list[tuple[int, float] | None]:
    """For each row, the earlier kept row whose embedding has cosine similarity >= threshold with it. Blocked: a
    block is compared to every kept row at once (one matrix product), then to the rows kept within the block."""
    kept = np.empty_like(x)
    kept_ids: list[int] = []
    out: list[tuple[int, float] | None] = []
    for s in range(0, len(x), block):
        blk = x[s:s + block]
        prev = blk @ kept[:len(kept_ids)].T if kept_ids else np.zeros((len(blk), 0), np.float32)
        inner = blk @ blk.T
        local: list[int] = []  # positions in this block kept so far
        for r in range(len(blk)):
            j = int(prev[r].argmax()) if prev.shape[1] else -1
            best = (kept_ids[j], float(prev[r, j])) if j >= 0 else None
            if local:
                jl = local[int(inner[r, local].argmax())]
                if best is None or inner[r, jl] > best[1]:
                    best = (s + jl, float(inner[r, jl]))
            if best is not None and best[1] >= threshold:
                out.append(best)
                continue
            out.append(None)
            local.append(r)
        for r in local:
            kept[len(kept_ids)] = blk[r]
            kept_ids.append(s + r)
    return out


def dedup(rows: list[dict], params: dict, ctx: Context) -> Step:
    """Exact duplicates (same normalised prompt and response), then near duplicates: `method` minhash (Jaccard of
    character 5-grams of prompt + response >= threshold, default 0.6), embedding (cosine similarity of the
    embeddings of prompt + response >= threshold, default 0.95) or exact (none). The first occurrence is kept."""
    method = params.get("method", "minhash")
    if method not in ("minhash", "embedding", "exact"):
        raise RecipeError(f"dedup: unknown method {method!r}; expected minhash, embedding or exact")
    threshold = float(params.get("threshold", 0.95 if method == "embedding" else 0.6))
    kept, dropped, first = [], [], {}
    for r in rows:
        key = normalise(r["prompt"]) + "\x00" + normalise(r["response"])
        if key in first:
            dropped.append((r["id"], f"exact duplicate of {first[key]}", 1.0))
        else:
            first[key] = r["id"]
            kept.append(r)
    if method == "exact":
        return Step(kept, dropped)
    if method == "minhash":
        matches, measure = _minhash_dups(kept, threshold), "jaccard"
    else:
        name = params.get("embed", "minilm")
        if name not in EMBEDDINGS:
            raise RecipeError(f"dedup: unknown embed {name!r}; expected {' or '.join(EMBEDDINGS)}")
        x = embed([r["prompt"] + "\n" + r["response"] for r in kept], name, ctx.results, ctx.meter)
        matches, measure = _embedding_dups(x, threshold), f"{name} cosine"
    out = []
    for r, m in zip(kept, matches):
        if m:
            dropped.append((r["id"], f"near duplicate of {kept[m[0]]['id']} ({measure} {m[1]:.2f})", m[1]))
        else:
            out.append(r)
    return Step(out, dropped, {"method": method, "threshold": threshold, "near_duplicates": sum(map(bool, matches))})


# ---------------------------------------------------------------------------------------------------------------
# Scorers: (rows, params, ctx) -> (a quality score per row, an optional note per row saying why). Pluggable by
# name; SCORER_KEYS lists each one's parameters. Higher is better; filter and best_of_k keep by threshold or rank.

Scored = tuple[list[float], list[str] | None]


def verifier_scores(rows: list[dict], params: dict, ctx: Context) -> Scored:
    """1 if the skills world's verifier accepts the response, else 0."""
    out = []
    for row in rows:
        if "skill" not in row or "params" not in row:
            raise RecipeError(f"example {row['id']}: the verifier scorer needs skills-world rows (skill, op, params)")
        out.append(float(world.verify(row["skill"], row["op"], tuple(row["params"]), row["response"], _WORLD)))
    return out, None


_WORLD = world.build_world()


def repetition(text: str) -> float:
    """Share of repeated word bigrams: 0 for varied text, near 1 for a loop; 0 below 4 bigrams (too short to say)."""
    words = text.lower().split()
    grams = list(zip(words, words[1:]))
    return 0.0 if len(grams) < 4 else 1 - len(set(grams)) / len(grams)


HEURISTIC_DEFAULTS = {"min_chars": 1, "max_chars": 2000, "max_words": None, "max_repeat": 0.5, "format": None}


def heuristic_scores(rows: list[dict], params: dict, ctx: Context) -> Scored:
    """Rules on the response: min_chars, max_chars, max_words, max_repeat (share of repeated word bigrams) and
    format (a regular expression the stripped response must match in full). Score: the share of rules passed."""
    rules = {k: params.get(k, v) for k, v in HEURISTIC_DEFAULTS.items() if params.get(k, v) is not None}
    if "format" in rules:
        try:
            pattern = re.compile(rules["format"], re.S)
        except re.error as e:
            raise RecipeError(f"filter heuristic: format: invalid regular expression ({e})") from None
    scores, notes = [], []
    for row in rows:
        text = row["response"].strip()
        measured = {"min_chars": len(text), "max_chars": len(text), "max_words": len(text.split()),
                    "max_repeat": repetition(text)}
        failed = [f"{k} ({measured[k]:.3g} {'<' if k == 'min_chars' else '>'} {v})" for k, v in rules.items()
                  if k != "format" and (measured[k] < v if k == "min_chars" else measured[k] > v)]
        if "format" in rules and not pattern.fullmatch(text):
            failed.append("format (no match)")
        scores.append(1 - len(failed) / len(rules))
        notes.append("failed " + ", ".join(failed) if failed else "")
    return scores, notes


def reward_scores(rows: list[dict], params: dict, ctx: Context) -> Scored:
    """A reward model (any Hugging Face sequence-classification folder): its score of (prompt, response)."""
    if "model" not in params:
        raise RecipeError("scorer reward needs model: <a local sequence-classification model folder>")
    return generate.reward(params["model"], [(r["prompt"], r["response"]) for r in rows],
                           _need_results(ctx, "scorer reward"), ctx.meter,
                           label=params.get("label"), batch_size=int(params.get("batch_size", 16))), None


def judge_scores(rows: list[dict], params: dict, ctx: Context) -> Scored:
    """An LLM judge: a causal LM's probability of "yes" to a judging prompt with {prompt} and {response} slots."""
    if "model" not in params:
        raise RecipeError("scorer judge needs model: <a model alias or local causal-LM folder>")
    template = params.get("prompt", generate.DEFAULT_JUDGE_PROMPT)
    try:
        if template.format(prompt="", response="\x00").count("\x00") != 1:
            raise ValueError
    except (KeyError, IndexError, ValueError):
        raise RecipeError("scorer judge: prompt must contain {response} once (and usually {prompt}), and no other "
                          "{...} slots (write {{ and }} for braces)") from None
    return generate.judge_yes(params["model"], [(r["prompt"], r["response"]) for r in rows], template,
                              _need_results(ctx, "scorer judge"), ctx.meter,
                              batch_size=int(params.get("batch_size", 16))), None


SCORERS: dict[str, Callable[[list[dict], dict, Context], Scored]] = {
    "verifier": verifier_scores, "heuristic": heuristic_scores, "reward": reward_scores, "judge": judge_scores}
SCORER_KEYS = {"verifier": set(), "heuristic": set(HEURISTIC_DEFAULTS), "reward": {"model", "label", "batch_size"},
               "judge": {"model", "prompt", "batch_size"}}


def _score(rows: list[dict], params: dict, ctx: Context) -> tuple[str, list[float], list[str] | None]:
    name = params.get("scorer", "verifier")
    if name not in SCORERS:
        raise RecipeError(f"unknown scorer {name!r}; expected one of {', '.join(SCORERS)}")
    scores, notes = SCORERS[name](rows, params, ctx)
    return name, scores, notes


def filter_(rows: list[dict], params: dict, ctx: Context) -> Step:
    """Keep rows whose score >= threshold (default 1.0: every verifier check or heuristic rule passed), or the
    top_n by score (ties broken by position)."""
    name, scores, notes = _score(rows, params, ctx)
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


def response_length(row: dict, by: str = "chars") -> int:
    """A response's length in characters (a tokenizer-free proxy for tokens: ~4 a token in English prose) or words."""
    return len(row["response"]) if by == "chars" else len(row["response"].split())


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


# ---------------------------------------------------------------------------------------------------------------
# Diversity: n rows that cover the prompt space.


def k_center(x: np.ndarray, n: int, seed: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Greedy k-center (Gonzalez 1985, the core-set selection of Sener & Savarese 2018): start from a seeded random
    row, then repeatedly add the row farthest (cosine distance) from everything chosen; within 2x of the optimal
    covering radius. Returns the chosen rows, and each row's distance to and index of its nearest chosen row."""
    first = int(np.random.default_rng(stable_hash("kcenter", seed) % 2**32).integers(len(x)))
    chosen = [first]
    dist = 1 - x @ x[first]
    nearest = np.full(len(x), first)
    dist[first] = -1  # chosen rows are marked -1, so that exact duplicates (distance 0) can still be picked after
    for _ in range(n - 1):  # each round is one matrix-vector product: n x rows x dims multiply-adds in all
        i = int(dist.argmax())
        chosen.append(i)
        d = 1 - x @ x[i]
        closer = d < dist
        dist[closer], nearest[closer] = d[closer], i
        dist[i], nearest[i] = -1, i
    return chosen, np.maximum(dist, 0), nearest


def _nearest_chosen(x: np.ndarray, chosen: list[int], block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    c = x[chosen]
    dist, nearest = np.empty(len(x), np.float32), np.empty(len(x), int)
    for s in range(0, len(x), block):  # blocks keep the rows x chosen similarity matrix small
        sims = x[s:s + block] @ c.T
        j = sims.argmax(1)
        nearest[s:s + block] = np.asarray(chosen)[j]
        dist[s:s + block] = np.maximum(1 - sims[np.arange(len(j)), j], 0)
    return dist, nearest


def cluster_balanced(x: np.ndarray, n: int, clusters: int, seed: int) -> list[int]:
    """k-means into `clusters` groups, then one row per cluster in turn (each cluster's rows in seeded random
    order) until n: small clusters are emptied, big ones thinned, so rare kinds of prompt survive."""
    from sklearn.cluster import MiniBatchKMeans

    k = min(clusters, len(x))
    labels = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096).fit_predict(x)
    rng = np.random.default_rng(stable_hash("clusters", seed) % 2**32)
    members = [list(rng.permutation(np.flatnonzero(labels == c))) for c in range(k)]
    chosen: list[int] = []
    while len(chosen) < n:
        for m in members:
            if m and len(chosen) < n:
                chosen.append(int(m.pop()))
    return chosen


def diversity(rows: list[dict], params: dict, ctx: Context) -> Step:
    """n rows covering the prompt space: embeddings (`embed`: minilm, or tfidf without a model) of the prompts (`on:
    prompt`, or `both` with the response), selected by k-center greedy (`method: kcenter`) or cluster-balanced
    sampling (`method: clusters`, `clusters` k-means groups, default 64)."""
    if "n" not in params:
        raise RecipeError("diversity needs n: <count>")
    n, method = int(params["n"]), params.get("method", "kcenter")
    name, on = params.get("embed", "minilm"), params.get("on", "prompt")
    if method not in ("kcenter", "clusters") or on not in ("prompt", "both") or name not in EMBEDDINGS:
        raise RecipeError(f"diversity: expected method kcenter or clusters, on prompt or both, embed "
                          f"{' or '.join(EMBEDDINGS)}; got {method!r}, {on!r}, {name!r}")
    if n >= len(rows):
        return Step(list(rows), [], {"method": method, "embed": name, "note": f"n={n} >= {len(rows)} rows: all kept"})
    x = embed([r["prompt"] + ("\n" + r["response"] if on == "both" else "") for r in rows], name, ctx.results,
              ctx.meter)
    if method == "kcenter":
        chosen, dist, nearest = k_center(x, n, ctx.seed)
    else:
        chosen = cluster_balanced(x, n, int(params.get("clusters", 64)), ctx.seed)
        dist, nearest = _nearest_chosen(x, chosen)
    keep = set(chosen)
    dropped = [(r["id"], f"not selected by {method} ({name}): cosine distance {dist[i]:.3f} to "
                         f"{rows[nearest[i]]['id']}", float(dist[i])) for i, r in enumerate(rows) if i not in keep]
    stats = {"method": method, "embed": name, "covering_radius": float(dist.max()),
             "distance_to_selected": describe(dist)}
    return Step([r for i, r in enumerate(rows) if i in keep], dropped, stats)


# ---------------------------------------------------------------------------------------------------------------
# Generation: best-of-K rejection sampling and distillation. Models come from harness.models (aliases or folders).

GEN_KEYS = {"max_new_tokens", "temperature", "top_p", "system", "shots", "batch_size"}


def _gen_params(params: dict, ctx: Context, k: int = 1, temperature: float = 0.0) -> generate.GenParams:
    shots = params.get("shots", [])
    if not isinstance(shots, list) or not all(isinstance(s, list) and len(s) == 2 and all(isinstance(x, str) for x in s)
                                              for s in shots):
        raise RecipeError(f"shots: expected a list of [prompt, response] string pairs, got {shots!r}")
    return generate.GenParams(max_new_tokens=int(params.get("max_new_tokens", 32)),
                              temperature=float(params.get("temperature", temperature)),
                              top_p=float(params.get("top_p", 1.0)), k=k, system=params.get("system"),
                              shots=tuple(map(tuple, shots)), seed=ctx.seed,
                              batch_size=int(params.get("batch_size", 16)))


def _need_results(ctx: Context, step: str) -> Path:
    if ctx.results is None:
        raise RecipeError(f"{step}: needs a results folder (for the model and the generation cache)")
    return ctx.results


def best_of_k(rows: list[dict], params: dict, ctx: Context) -> Step:
    """Rejection sampling: the `policy` model samples k responses per prompt (temperature 1.0 and top_p 1.0 by
    default), the scorer (as in filter; default verifier) scores each, and the best replaces the response. With a
    `threshold`, prompts whose best candidate scores below it are dropped (the acceptance rate is recorded)."""
    if "policy" not in params:
        raise RecipeError("best_of_k needs policy: <a model alias or local folder>")
    k = int(params.get("k", 4))
    if k < 1:
        raise RecipeError(f"best_of_k: k must be >= 1, got {k}")
    samples = generate.generate(params["policy"], [r["prompt"] for r in rows],
                                _gen_params(params, ctx, k=k, temperature=1.0), _need_results(ctx, "best_of_k"),
                                ctx.meter)
    candidates = [{**r, "response": c} for r, cs in zip(rows, samples) for c in cs]
    name, scores, _ = _score(candidates, params, ctx)
    threshold = float(params["threshold"]) if "threshold" in params else None
    kept, dropped, best_scores = [], [], []
    for i, r in enumerate(rows):
        s = scores[i * k:(i + 1) * k]
        j = int(np.argmax(s))  # the first of equally good candidates
        best_scores.append(s[j])
        if threshold is not None and s[j] < threshold:
            dropped.append((r["id"], f"best of {k} {name} score {s[j]:.3g} below {threshold:g}: "
                                     f"{samples[i][j][:60]!r}", s[j]))
        else:
            kept.append({**r, "response": samples[i][j], "original_response": r["response"],
                         "best_of_k_score": s[j]})
    stats = {"scorer": name, "k": k, "acceptance_rate": len(kept) / len(rows) if rows else None,
             "best": describe(best_scores), "candidates": describe(scores),
             "distinct_per_prompt": float(np.mean([len(set(c)) for c in samples])) if samples else None}
    return Step(kept, dropped, stats)


def distill(rows: list[dict], params: dict, ctx: Context) -> Step:
    """A `teacher` model writes the response for every prompt (greedy by default; temperature > 0 samples). Rows the
    teacher answers with nothing are dropped. Follow with {filter: ...} to keep only answers that pass a check."""
    if "teacher" not in params:
        raise RecipeError("distill needs teacher: <a model alias or local folder>")
    outputs = generate.generate(params["teacher"], [r["prompt"] for r in rows], _gen_params(params, ctx),
                                _need_results(ctx, "distill"), ctx.meter)
    kept, dropped = [], []
    for r, (text,) in zip(rows, outputs):
        if text:
            kept.append({**r, "response": text, "original_response": r["response"]})
        else:
            dropped.append((r["id"], "the teacher wrote an empty response", None))
    stats = {"teacher": params["teacher"], "changed": float(np.mean([x["response"] != x["original_response"]
                                                                      for x in kept])) if kept else None,
             "response_chars": describe([len(x["response"]) for x in kept])}
    return Step(kept, dropped, stats)


STEPS: dict[str, Callable[[list[dict], dict, Context], Step]] = {
    "dedup": dedup, "filter": filter_, "balance": balance, "random": random_subset, "longest": longest,
    "diversity": diversity, "best_of_k": best_of_k, "distill": distill,
}
_ALL_SCORER_KEYS = {"scorer"} | set().union(*SCORER_KEYS.values())
STEP_KEYS: dict[str, set[str]] = {
    "dedup": {"method", "threshold", "embed"}, "filter": {"threshold", "top_n"} | _ALL_SCORER_KEYS,
    "balance": {"n"}, "random": {"n", "like", "match", "by"}, "longest": {"n", "like", "by"},
    "diversity": {"n", "method", "embed", "on", "clusters"},
    "best_of_k": {"policy", "k", "threshold"} | GEN_KEYS | _ALL_SCORER_KEYS, "distill": {"teacher"} | GEN_KEYS,
}
MODEL_KEYS = ("policy", "teacher", "model")  # parameters naming a model: their fingerprints join the recipe's id
MAIN_PARAM = {"filter": "scorer", "random": "n", "longest": "n", "balance": "n", "diversity": "n", "dedup": "method",
              "distill": "teacher", "best_of_k": "policy"}  # {random: 1000} means {random: {n: 1000}}


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
           ("longest", "by"): (lambda v: v in ("chars", "words"), "chars or words")}


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
