"""The dedup step: exact duplicates, then near duplicates by MinHash or by embeddings."""

from __future__ import annotations

import re
import unicodedata

import numpy as np

from harness.core.ids import stable_hash
from harness.data.curate.base import Context, RecipeError, Step
from harness.data.embed import METHODS as EMBEDDINGS
from harness.data.embed import embed


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
