"""The dedup step: exact duplicates, then near duplicates by MinHash or by embeddings."""

from __future__ import annotations

import numpy as np

from harness.data.curate import ngrams
from harness.data.curate.base import Context, RecipeError, Step, parts_of, text_of
from harness.data.curate.ngrams import normalise
from harness.data.embed import METHODS as EMBEDDINGS
from harness.data.embed import embed

# MinHash over character 5-grams (ngrams.py, signatures by rensa): 128 permutations in 32 bands of 4 rows. Two texts
# with Jaccard similarity s share a band with probability 1 - (1 - s^4)^32: 0.9998 at s=0.7, 0.988 at s=0.6, 0.56
# at s=0.4, 0.05 at s=0.2. Candidates are then checked against the exact Jaccard, so the bands only decide what gets
# compared: the kept set differs from an all-pairs search only by the pairs just above the threshold that no band
# brings together (the earlier 16 bands missed 11% of the pairs at s=0.6: 1 - 0.6^4 = 0.87, 0.87^16 = 0.11).
# Only candidates whose MinHash estimate of the Jaccard (the share of equal signature values, standard deviation
# sqrt(s(1-s)/128) = 0.043 at s=0.6) is within _MARGIN of the threshold are checked exactly: 3.5 deviations, so
# a pair at the threshold is skipped with probability ~2e-4, and prose that shares sentences without being a copy
# (s ~ 0.3-0.45, candidates in many bands) costs a vector comparison instead of a set intersection.
_MARGIN = 0.15
_CHUNK = 10_000  # texts signed at once: 10k texts of ~3,000 characters are 30M codes (240 MB), then freed


def _bands(norm: list[str]) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Every text's signature (8 bits a value: enough for the estimate, two different values agree once in 256)
    and, per band, the groups of texts that share the band's key. Only groups of two or more are kept (a text
    alone in every band has nothing to be compared with), so 1M texts cost (texts, 128) bytes plus (texts, 32)
    group numbers, not a Python bucket per band and text. Returns (signatures, group of each text in each band or
    -1, members of each group in order)."""
    sig8 = np.empty((len(norm), ngrams.N_PERM), np.uint8)
    keys = np.empty((len(norm), ngrams.BANDS), np.uint64)
    for s in range(0, len(norm), _CHUNK):
        sig = ngrams.signatures(*ngrams.shingles(norm[s:s + _CHUNK]))
        sig8[s:s + len(sig)], keys[s:s + len(sig)] = sig, ngrams.band_keys(sig)
    group = np.full(keys.shape, -1, np.int64)
    members: list[list[int]] = []
    for b in range(ngrams.BANDS):
        _, inv, counts = np.unique(keys[:, b], return_inverse=True, return_counts=True)
        shared = np.flatnonzero(counts[inv] >= 2)
        if not len(shared):
            continue
        order = shared[np.argsort(inv[shared], kind="stable")]  # by group, texts in order within each
        cuts = np.flatnonzero(np.diff(inv[order])) + 1
        for g, rows in enumerate(np.split(order, cuts), start=len(members)):
            group[rows, b] = g
            members.append(rows.tolist())
    return sig8, group, members


def _minhash_dups(norm: list[str], threshold: float) -> list[tuple[int, float] | None]:
    """For each normalised text, the earlier kept one it near-duplicates (Jaccard of character 5-grams >=
    threshold)."""
    sig8, group, members = _bands(norm)
    sets: dict[int, np.ndarray] = {}  # 5-gram sets of the texts compared exactly, made when first needed

    def code_set(i: int) -> np.ndarray:
        if i not in sets:
            sets[i] = ngrams.code_set(norm[i])
        return sets[i]

    kept = np.ones(len(norm), bool)
    out: list[tuple[int, float] | None] = [None] * len(norm)
    for i in np.flatnonzero((group >= 0).any(axis=1)).tolist():
        near = list(dict.fromkeys(m for g in group[i][group[i] >= 0].tolist() for m in members[g] if m < i))
        near = [m for m in near if kept[m]]
        if not near:
            continue
        estimate = (sig8[near] == sig8[i]).mean(axis=1)
        for j in np.argsort(-estimate, kind="stable"):
            if estimate[j] < threshold - _MARGIN:
                break
            sim = ngrams.jaccard(code_set(i), code_set(near[j]))
            if sim >= threshold:
                out[i], kept[i] = (near[j], sim), False
                break
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
    """Exact duplicates (same normalised text), then near duplicates: `method` minhash (Jaccard of character 5-grams
    >= threshold, default 0.6), embedding (cosine similarity of the embeddings >= threshold, default 0.95; `embed`:
    minilm, static or tfidf) or exact (none). The text is the whole conversation (`on`: conversation, the default; a
    {prompt, response} row's prompt and response), or its prompt or response. The first occurrence is kept."""
    method = params.get("method", "minhash")
    if method not in ("minhash", "embedding", "exact"):
        raise RecipeError(f"dedup: unknown method {method!r}; expected minhash, embedding or exact")
    threshold = float(params.get("threshold", 0.95 if method == "embedding" else 0.6))
    on = params.get("on", "conversation")
    kept, dropped, first, norm = [], [], {}, []
    for r in rows:
        parts = [normalise(p) for p in parts_of(r, on)]
        key = "\x00".join(parts)
        if key in first:
            dropped.append((r["id"], f"exact duplicate of {first[key]}", 1.0))
        else:
            first[key] = r["id"]
            kept.append(r)
            norm.append(" ".join(p for p in parts if p))  # = normalise(text_of(r)): the parts' words in order
    if method == "exact":
        return Step(kept, dropped)
    if method == "minhash":
        matches, measure = _minhash_dups(norm, threshold), "jaccard"
    else:
        name = params.get("embed", "minilm")
        if name not in EMBEDDINGS:
            raise RecipeError(f"dedup: unknown embed {name!r}; expected {' or '.join(EMBEDDINGS)}")
        x = embed([text_of(r, on) for r in kept], name, ctx.results, ctx.meter)
        matches, measure = _embedding_dups(x, threshold), f"{name} cosine"
    out = []
    for r, m in zip(kept, matches):
        if m:
            dropped.append((r["id"], f"near duplicate of {kept[m[0]]['id']} ({measure} {m[1]:.2f})", m[1]))
        else:
            out.append(r)
    return Step(out, dropped, {"method": method, "threshold": threshold, "near_duplicates": sum(map(bool, matches))})
