"""Embeddings (harness.data.embed): unit vectors from TF-IDF without a model, the word cut, the shard store; MiniLM
(slow: it loads the model) cached by text."""

import numpy as np
import pytest

from harness.data import embed, generate


def test_tfidf_gives_one_unit_vector_per_text_and_same_texts_same_vectors():
    texts = ["What is 2 + 3?", "Name the capital city of Trafen.", "What is 2 + 3?", "Give the antonym of hot.", ""]
    meter = generate.Meter()
    v = embed.embed(texts, "tfidf", None, meter)
    assert v.shape[0] == 5 and v.dtype == np.float32
    norms = np.linalg.norm(v, axis=1)
    np.testing.assert_allclose(norms[:4], 1.0, rtol=1e-5)  # unit length, so a dot product is the cosine
    assert norms[4] in (0.0, pytest.approx(1.0))  # an empty text: no n-grams, never a division by zero
    np.testing.assert_array_equal(v[0], v[2])
    assert v[0] @ v[1] < 0.99  # different texts, different directions
    assert meter.computed == 4 and meter.cached == 0  # each distinct text once; tfidf is never cached
    np.testing.assert_array_equal(embed.embed(texts, "tfidf", None, generate.Meter()), v)  # deterministic
    with pytest.raises(ValueError, match="unknown embedding 'bert'; expected one of minilm, static, tfidf"):
        embed.embed(texts, "bert", None, meter)


def test_truncate_keeps_the_first_n_words():
    text = "one  two\tthree\nfour five"
    assert embed.truncate(text, 3) == "one two three"
    assert embed.truncate(text, 5) == text and embed.truncate(text, 6) == text  # short enough: untouched
    assert embed.truncate("", 3) == ""


def test_store_round_trips_shards_and_writes_nothing_half_done(tmp_path):
    folder = tmp_path / "embeddings"
    first = embed.Store(folder)
    assert first.rows == {} and not folder.exists()  # opening writes nothing
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    first.add(["a", "b"], vectors, np.array([0.5, 0.25]))
    first.add(["c"], vectors[:1] + 10, np.array([1.0]))
    assert len(list(folder.glob("*.npz"))) == 2 and not list(folder.glob(".*"))  # one shard a call, no temp left
    again = embed.Store(folder)
    assert sorted(again.rows) == ["a", "b", "c"]
    np.testing.assert_array_equal(again.rows["b"][0], vectors[1])
    assert again.rows["a"][1] == 0.5 and again.rows["c"][1] == 1.0
    memory = embed.Store(None)  # no folder: in memory only
    memory.add(["a"], vectors[:1], np.array([0.1]))
    assert list(memory.rows) == ["a"] and not list(tmp_path.glob("*.npz"))


def test_text_key_is_the_texts_hash():
    assert embed.text_key("abc") == embed.text_key("abc") != embed.text_key("abd")
    assert len(embed.text_key("abc")) == 32


@pytest.mark.slow
def test_embedding_cache_and_truncation(tmp_path, monkeypatch):
    """A second call embeds nothing (and still reports what the texts cost); a text longer than the 256 word pieces
    MiniLM reads embeds exactly as its truncation does, and as the model does with the whole text."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "shared"))  # no texts embedded by earlier tests
    long = " ".join(f"{w}," for w in ("alpha beta gamma delta " * 150).split())  # 600 words, >= 1,200 pieces
    texts = ["What is the capital of Freedonia?", long, "How many legs does a woodlouse have?"]  # no other test's
    first = generate.Meter()
    v = embed.embed(texts, "minilm", tmp_path, first)
    assert (first.computed, first.cached) == (3, 0) and first.compute_seconds > 0
    again = generate.Meter()
    v2 = embed.embed(texts[::-1] + texts[:1], "minilm", tmp_path, again)  # any order, repeats: from the cache
    assert (again.computed, again.cached) == (0, 3) and again.compute_seconds > 0
    np.testing.assert_array_equal(v2, v[[2, 1, 0, 0]])
    cut = embed.truncate(long, 256)
    assert len(cut.split()) == 256 and long.startswith(cut)
    alone = generate.Meter()
    np.testing.assert_allclose(embed.embed([cut], "minilm", None, alone)[0], v[1], atol=1e-6)
    with generate._autocast():  # a text this long is embedded under bf16 autocast where the CPU has it
        whole = embed._minilm().encode([long], normalize_embeddings=True)[0]
    np.testing.assert_allclose(whole, v[1], atol=1e-6)
    assert embed.truncate("short text", 256) == "short text"


@pytest.mark.slow
def test_static_embedder_is_distilled_once_and_sees_meaning(monkeypatch):
    """model2vec distilled from the bundled MiniLM (minutes, once per machine; here once per test session): a
    cached folder named by content, unit vectors, a paraphrase nearer than an unrelated text, and the same model
    (no second distillation) for every later call. Usable by diversity, embedding dedup and decontaminate."""
    from harness.data import curate
    from harness.data.curate import contamination
    from helpers import row

    path = embed.static_model_path()
    assert path.parent.name == "models" and path.name.startswith("model2vec-minilm-") and (path / "config.json").exists()
    made = path.stat().st_mtime_ns
    texts = ["What is the capital of France?", "What's the capital city of France?", "How many legs has a spider?"]
    v = embed.embed(texts, "static", None, generate.Meter())
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert embed.static_model_path() == path and path.stat().st_mtime_ns == made
    rows = [row(i, t, "x") for i, t in enumerate(texts)]
    ctx = curate.Context(seed=0, sizes={})
    assert len(curate.diversity(rows, {"n": 2, "embed": "static"}, ctx).kept) == 2
    assert curate.dedup(rows, {"method": "embedding", "embed": "static", "threshold": 0.9}, ctx).dropped[0][0] == "r1"
    index = contamination.Index([("t", 0, texts[1])], method="embedding", threshold=0.9)
    assert index.search(texts) == [[0], [0], []]


@pytest.mark.slow
def test_static_vectors_are_model2vecs_own():
    """The harness pools the static model's piece vectors as one sparse product (model2vec loops in Python): the same
    vectors as model2vec's encode, on texts shorter and longer than the pieces read, with unknown pieces, and empty."""
    long = " ".join(f"word{i} and, punctuation!" for i in range(400))
    texts = ["What is the capital of France?", long, "\u2603\u2604 snowman \U0001f600", "", "a " * 600]
    model = embed._static()
    want = model.encode([embed.truncate(t, embed._STATIC_PIECES) for t in texts], max_length=embed._STATIC_PIECES,
                        use_multiprocessing=False).astype(np.float32)
    want /= np.where((n := np.linalg.norm(want, axis=1, keepdims=True)) == 0, 1, n)
    got = embed._static_vectors(texts)
    np.testing.assert_allclose(got, want, atol=2e-3)  # model2vec averages in float16
    assert (got[1] @ want[1]) > 0.9999 and not got[3].any()
