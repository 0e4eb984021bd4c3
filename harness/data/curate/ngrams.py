"""Hashed n-grams for near-duplicate and contamination search, vectorised over many texts at once.

Character 5-grams of a normalised text (ASCII, lower case, no punctuation) are packed into 40-bit integers: an exact
code for each 5-gram, no hash collisions, so the Jaccard similarity of two code sets is that of the 5-gram sets.
MinHash signatures of those sets come from rensa (Rust; 128 permutations). Word n-grams (the contamination check)
are polynomial hashes over per-word ids, computed for every window of every text by numpy.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

K = 5  # characters per shingle
N_PERM, BANDS = 128, 32  # 32 bands of 4 rows: see duplicates.py for the probabilities
_SEED = 12345
_SHORT = np.uint64(1 << 40)  # a text shorter than K characters is one code: its bytes with this bit above them


def _ascii_lower(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()


def normalise(text: str) -> str:
    """Lower case, accents and punctuation removed, whitespace collapsed: exact duplicates up to formatting."""
    return " ".join(re.sub(r"[^\w\s]", " ", _ascii_lower(text)).split())


def words(text: str) -> str:
    """normalise, but arithmetic symbols are words of their own: "What is 8 + 7?" and "What is 8 - 7?" are different
    questions (a word n-gram must tell them apart; a 5-gram Jaccard of whole rows barely notices)."""
    spaced = re.sub(r"([+\-*/=<>^%])", r" \1 ", _ascii_lower(text))
    return " ".join(re.sub(r"[^\w\s+\-*/=<>^%]", " ", spaced).split())


def shingles(norm: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Character K-gram codes of normalised texts, concatenated: (codes, offsets), text i's codes are
    codes[offsets[i]:offsets[i+1]] (duplicates within a text kept: a MinHash ignores them)."""
    joined = "".join(norm).encode()
    lens = np.fromiter(map(len, norm), dtype=np.int64, count=len(norm))
    ends = np.cumsum(lens)
    windows = max(len(joined) - K + 1, 0)
    # every window of the joined texts at once: 8 bytes read big-endian from each position (7 bytes of padding
    # at the end), the last 3 shifted out
    view = np.ndarray((windows,), ">u8", joined + bytes(7), strides=(1,))
    code = view.astype(np.uint64) >> np.uint64(8 * (8 - K))
    valid = np.ones(windows, bool)  # a window that runs into the next text is not a K-gram of either
    cross = (ends[:-1, None] - np.arange(1, K)[None, :]).ravel()
    valid[cross[(cross >= 0) & (cross < windows)]] = False
    counts = np.maximum(lens - K + 1, 1)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    short = np.flatnonzero(lens < K)
    if not len(short):
        return code[valid], offsets
    out = np.empty(offsets[-1], np.uint64)  # rare: texts of 0-4 characters are one code each, their whole text
    at_short = np.zeros(len(out), bool)
    at_short[offsets[short]] = True
    starts = ends - lens
    for i in short:  # their windows (if any) all cross into the next text, so none is valid
        valid[starts[i]:min(ends[i], windows)] = False
    out[~at_short] = code[valid]
    out[offsets[short]] = [int(_SHORT) | int.from_bytes(norm[i].encode(), "big") for i in short]
    return out, offsets


def signatures(codes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """MinHash signatures (texts x N_PERM, uint32) of the texts' K-gram sets (shingles' output), by rensa."""
    import rensa

    if len(offsets) < 2:
        return np.zeros((0, N_PERM), np.uint32)
    m = rensa.RMinHash.digest_matrix_from_flat_token_hashes(codes, offsets.astype(np.uint64), N_PERM, _SEED)
    return np.asarray(m.to_rows(), dtype=np.uint32)


def band_keys(sig: np.ndarray) -> np.ndarray:
    """One 64-bit key per (row, band): two texts share a key when they agree on the band's 4 values (a collision
    of two different bands only adds a candidate, which the exact check then rejects)."""
    b = sig.reshape(len(sig), BANDS, sig.shape[1] // BANDS).astype(np.uint64)
    key = np.zeros(b.shape[:2], np.uint64) + np.arange(BANDS, dtype=np.uint64)
    for j in range(b.shape[2]):
        key = key * np.uint64(0x9E3779B97F4A7C15) + b[:, :, j]  # wraps modulo 2^64, as intended
    return key


def distinct(codes: np.ndarray) -> np.ndarray:
    """The distinct codes, sorted: a sort and a comparison (numpy's hash-based np.unique took ~1 ms for 3,000
    codes here, 20x longer)."""
    codes = np.sort(codes)
    return codes[np.concatenate(([True], codes[1:] != codes[:-1]))] if len(codes) else codes


def code_set(text: str) -> np.ndarray:
    """One normalised text's distinct K-gram codes, sorted (for jaccard)."""
    return distinct(shingles([text])[0])


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The Jaccard similarity of two sets given as sorted arrays of distinct codes (code_set's output): each
    code of the smaller looked up in the larger by binary search."""
    if len(a) > len(b):
        a, b = b, a
    if not len(b):
        return 1.0
    at = np.minimum(np.searchsorted(b, a), len(b) - 1)
    both = int(np.count_nonzero(b[at] == a))
    return both / (len(a) + len(b) - both)


class WordGrams:
    """Hashes of word n-grams: each word gets a process-local id, an n-gram the polynomial hash of its ids (mod
    2^64). Hashes are comparable only within one WordGrams (the ids are assigned as words are seen)."""

    _P = np.uint64(1_000_003)

    def __init__(self):
        self.ids: dict[str, int] = {}

    def words(self, norm: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = self.ids
        flat = [ids.setdefault(w, len(ids) + 1) for t in norm for w in t.split()]
        lens = np.fromiter((t.count(" ") + 1 if t else 0 for t in norm), dtype=np.int64, count=len(norm))
        return np.asarray(flat, dtype=np.uint64), np.concatenate(([0], np.cumsum(lens)))

    def grams(self, norm: list[str], lengths: set[int]) -> tuple[np.ndarray, np.ndarray]:
        """(hash, text index) of every n-gram of each length in `lengths` that fits inside a text."""
        w, starts = self.words(norm)
        row = np.repeat(np.arange(len(norm)), np.diff(starts))
        end = np.repeat(starts[1:], np.diff(starts))  # where each word's text ends
        h, hashes, rows = np.zeros(len(w), np.uint64), [], []
        for k in range(1, max(lengths, default=0) + 1):  # h[p] = hash of the k words from p
            h = h[:len(w) - k + 1] * self._P + w[k - 1:]
            if k in lengths:
                fits = np.arange(len(h)) + k <= end[:len(h)]
                hashes.append(h[fits])
                rows.append(row[:len(h)][fits])
        if not hashes:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        return np.concatenate(hashes), np.concatenate(rows)
