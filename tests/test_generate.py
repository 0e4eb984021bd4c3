"""Model calls for curation (harness.data.generate): the journal they are cached in, the meter that counts them, and
generation on micro (seeded, so the same prompts give the same samples in any results folder)."""

from harness.data import generate


def test_meter_adds_field_by_field():
    total = generate.Meter(generated_tokens=5, compute_seconds=1.5, computed=2, cached=1)
    total.add(generate.Meter(generated_tokens=3, compute_seconds=0.5, computed=0, cached=4))
    assert total == generate.Meter(generated_tokens=8, compute_seconds=2.0, computed=2, cached=5)


def test_journal_reads_back_what_it_appended_and_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "cache" / "generations" / "m.jsonl"
    journal = generate.Journal(path)
    assert journal.records == {} and not path.exists()
    recs = [{"key": generate.prompt_key(p), "value": [p.upper()], "tokens": 2, "seconds": 0.1} for p in ("a", "b")]
    journal.append(recs)
    with path.open("a") as f:
        f.write('{"key": "c", "val')  # a kill mid-append
    again = generate.Journal(path)
    assert list(again.records) == [r["key"] for r in recs] and again.records[recs[1]["key"]]["value"] == ["B"]
    assert generate.prompt_key("a") == generate.prompt_key("a") != generate.prompt_key("a ")


def test_generation_is_seeded_cached_and_metered(results, tmp_path, monkeypatch):
    prompts = ["What is 2 + 3?", "Name the opposite of hot.", "What is 2 + 3?"]  # a repeat is generated once
    params = generate.GenParams(max_new_tokens=4, temperature=1.0, k=2, batch_size=2)
    first = generate.Meter()
    out = generate.generate("micro", prompts, params, results, first)
    assert len(out) == 3 and all(len(c) == 2 for c in out) and out[0] == out[2]
    assert (first.computed, first.cached) == (2, 0) and 0 < first.generated_tokens <= 2 * 2 * 4
    elsewhere = generate.Meter()
    assert generate.generate("micro", prompts, params, tmp_path / "other", elsewhere) == out  # same seed, same samples
    assert elsewhere.generated_tokens == first.generated_tokens

    def refuse(*a, **k):
        raise AssertionError("a model was loaded although every output was cached")

    monkeypatch.setattr(generate, "causal_lm", refuse)
    cached = generate.Meter()
    assert generate.generate("micro", prompts[:2], params, results, cached) == out[:2]
    assert (cached.computed, cached.cached) == (0, 2) and cached.generated_tokens == first.generated_tokens
    assert cached.compute_seconds > 0  # cached outputs still report what they cost when computed
