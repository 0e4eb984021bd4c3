"""Curation steps on small pools with known answers, user-data inputs, recipe fingerprints and the generation cache."""

import json

import pytest
from typer.testing import CliRunner

from harness import store
from harness.data import build, recipe, sources
from harness.data import curate, generate
from harness.cli import app
from harness.spec import SpecError, parse_matrix

CTX = curate.Context(seed=0, sizes={})
cli = CliRunner()


def row(i, prompt, response, **kw):
    return {"id": f"r{i}", "prompt": prompt, "response": response, **kw}


def arith(i, a, b, response):
    return row(i, f"What is {a} + {b}?", response, skill="arith", op="add", params=[a, b])


# ---------------------------------------------------------------------------------------------------------------
# Steps with known answers


def test_heuristic_filter_drops_planted_defects_with_reasons():
    rows = [row(0, "q", "Paris"), row(1, "q", ""),  # empty
            row(2, "q", "Sure! The answer is Paris. Let me know if you need anything else."),  # filler
            row(3, "q", "the cat the cat the cat the cat the cat"),  # a loop
            row(4, "q", "[Paris]")]  # off format
    res = curate.filter_(rows, {"scorer": "heuristic", "max_words": 4, "format": r"[A-Za-z0-9 ]+"}, CTX)
    assert [r["id"] for r in res.kept] == ["r0"]
    why = {i: reason for i, reason, _ in res.dropped}
    assert "min_chars" in why["r1"] and "max_words (13 > 4)" in why["r2"]
    assert "max_repeat" in why["r3"] and why["r4"].endswith("failed format (no match)")
    assert res.score_stats["scorer"] == "heuristic" and res.score_stats["n"] == 5
    with pytest.raises(curate.RecipeError, match="invalid regular expression"):
        curate.filter_(rows, {"scorer": "heuristic", "format": "("}, CTX)


def test_filter_top_n_keeps_the_highest_scores(monkeypatch):
    monkeypatch.setitem(curate.SCORERS, "length", lambda rows, p, c: ([len(r["response"]) for r in rows], None))
    rows = [row(i, "q", "x" * n) for i, n in enumerate([3, 9, 1, 7])]
    res = curate.filter_(rows, {"scorer": "length", "top_n": 2}, CTX)
    assert [r["id"] for r in res.kept] == ["r1", "r3"]
    assert all(reason.endswith("not in the top 2") for _, reason, _ in res.dropped)


def _three_kinds(n_each=12):
    arith = [row(i, f"What is {i % 7} + {i % 5}?", "x") for i in range(n_each)]
    facts = [row(100 + i, f"Name the capital city of Country{i}.", "x") for i in range(n_each)]
    words = [row(200 + i, f"Give the antonym of word{i}.", "x") for i in range(n_each)]
    return arith + facts + words


@pytest.mark.parametrize("method", ["kcenter", "clusters"])
def test_diversity_covers_every_kind_of_prompt(method):
    """36 prompts of three kinds: 3 picks cover all three kinds, where the first 3 rows would be one kind."""
    rows = _three_kinds()
    res = curate.diversity(rows, {"n": 3, "method": method, "embed": "tfidf", "clusters": 3}, CTX)
    assert len(res.kept) == 3 and len(res.dropped) == 33
    assert sorted(int(r["id"][1:]) // 100 for r in res.kept) == [0, 1, 2]
    assert res.score_stats["covering_radius"] > 0
    again = curate.diversity(rows, {"n": 3, "method": method, "embed": "tfidf", "clusters": 3}, CTX)
    assert [r["id"] for r in again.kept] == [r["id"] for r in res.kept]  # seeded


@pytest.mark.slow
def test_embedding_dedup_and_diversity_with_minilm(tmp_path, monkeypatch):
    """The one test that loads all-MiniLM-L6-v2: paraphrases are near duplicates by meaning, not by characters."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "shared"))
    rows = [row(0, "What is the capital of France?", "Paris"),
            row(1, "What's the capital city of France?", "Paris"),  # a paraphrase: few shared 5-grams
            row(2, "How many legs does a spider have?", "Eight"),
            row(3, "Which planet is closest to the sun?", "Mercury")]
    ctx = curate.Context(seed=0, sizes={}, results=tmp_path)
    minhash = curate.dedup(rows, {}, ctx)
    assert len(minhash.kept) == 4  # characters alone do not see it
    res = curate.dedup(rows, {"method": "embedding", "threshold": 0.85}, ctx)
    assert [r["id"] for r in res.kept] == ["r0", "r2", "r3"]
    assert res.dropped[0][1].startswith("near duplicate of r0 (minilm cosine 0.9")
    assert res.score_stats == {"method": "embedding", "threshold": 0.85, "near_duplicates": 1}
    assert list((tmp_path / "shared" / "embeddings").glob("minilm-*/*.npz"))  # cached by text, shared
    div = curate.diversity(rows, {"n": 3}, ctx)  # minilm by default: the paraphrase pair is one point
    assert len({r["id"] for r in div.kept} & {"r0", "r1"}) == 1


def test_embedding_cache_and_truncation(tmp_path, monkeypatch):
    """A second call embeds nothing (and still reports what the texts cost); a text longer than the 256 word pieces
    MiniLM reads embeds exactly as its truncation does, and as the model does with the whole text."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "shared"))  # no texts embedded by earlier tests
    import numpy as np

    from harness.data import embed

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


def test_progress_lines_show_rate_and_time_left(capsys):
    from harness.core.progress import progress

    with progress("embedding", total=100, unit="texts", every=0) as advance:
        advance(40)
        advance(60)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("embedding: 40/100 texts, ") and "texts/s" in lines[0] and "left" in lines[0]
    assert len(lines) == 2 and lines[1].startswith("embedding: 100/100 texts") and "left" not in lines[1]
    with progress("tiny", total=3, every=0) as advance:  # too small to show
        advance(3)
    assert capsys.readouterr().err == ""


def test_embedding_near_duplicates_across_blocks():
    import numpy as np

    x = np.eye(5, dtype=np.float32)[[0, 1, 0, 2, 1, 3]]  # rows 2 and 4 repeat rows 0 and 1
    for block in (1, 2, 64):
        m = curate._embedding_dups(x, 0.99, block=block)
        assert [a if a is None else a[0] for a in m] == [None, None, 0, None, 1, None]


def test_best_of_k_picks_the_highest_scoring_candidate(monkeypatch, tmp_path):
    """A fake policy with known candidates, scored by the real verifier."""
    rows = [arith(0, 2, 3, "4"), arith(1, 4, 4, "9"), arith(2, 1, 1, "3")]
    fake = {"What is 2 + 3?": ["4", "5", "6"], "What is 4 + 4?": ["8", "8", "7"], "What is 1 + 1?": ["0", "1", "3"]}
    monkeypatch.setattr(generate, "generate", lambda ref, prompts, p, results, meter: [fake[q] for q in prompts])
    ctx = curate.Context(seed=0, sizes={}, results=tmp_path)
    res = curate.best_of_k(rows, {"policy": "micro", "k": 3, "threshold": 1.0}, ctx)
    assert [(r["id"], r["response"], r["original_response"]) for r in res.kept] == [("r0", "5", "4"), ("r1", "8", "9")]
    assert res.dropped == [("r2", "best of 3 verifier score 0 below 1: '0'", 0.0)]
    assert res.score_stats["acceptance_rate"] == pytest.approx(2 / 3)
    assert res.score_stats["candidates"]["mean"] == pytest.approx(3 / 9)


def _no_model_loads(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model was loaded although every output was cached")

    monkeypatch.setattr(generate, "causal_lm", refuse)


def test_generation_steps_with_a_real_policy_and_the_cache(results, monkeypatch):
    """micro as policy, teacher and judge; a stub scorer (response length) picks the best; a rerun generates
    nothing and loads no model."""
    monkeypatch.setitem(curate.SCORERS, "length", lambda rows, p, c: ([len(r["response"]) for r in rows], None))
    rows = [arith(i, i, 1, str(i + 1)) for i in range(5)] + [arith(9, 0, 1, "1")]  # r9 repeats r0's prompt
    params = {"policy": "micro", "k": 3, "max_new_tokens": 6, "scorer": "length", "batch_size": 4}
    runs = []
    for _ in range(2):
        ctx = curate.Context(seed=0, sizes={}, results=results)
        runs.append((curate.best_of_k(rows, params, ctx), ctx.meter))
        _no_model_loads(monkeypatch)  # the second round must come from the cache
    (first, m1), (second, m2) = runs
    assert m1.computed == 5 and m1.cached == 0 and m1.generated_tokens > 0  # each distinct prompt once
    assert m2.computed == 0 and m2.cached == 5 and m2.generated_tokens == m1.generated_tokens
    assert [r["response"] for r in first.kept] == [r["response"] for r in second.kept]
    journal = next((results / "cache" / "generations").glob("*.jsonl"))
    cands = {rec["key"]: rec["value"] for rec in map(json.loads, journal.read_text().splitlines())}
    for r in first.kept:  # the longest of its own 3 candidates
        own = cands[generate.prompt_key(r["prompt"])]
        assert len(own) == 3 and len(r["response"]) == max(map(len, own))
    monkeypatch.undo()
    ctx = curate.Context(seed=0, sizes={}, results=results)
    judged = curate.filter_(rows, {"scorer": "judge", "model": "micro", "threshold": 0.0}, ctx)
    assert all(0 <= s <= 1 for s in [d[2] for d in judged.dropped] + [judged.score_stats["min"]])
    assert len(judged.kept) == len(rows) and ctx.meter.computed == 5
    dist = curate.distill(rows, {"teacher": "micro", "max_new_tokens": 6, "temperature": 1.0}, ctx)
    assert len(dist.kept) + len(dist.dropped) == len(rows) and dist.kept  # sampled: micro writes something
    assert all(r["response"] and r["original_response"] == x["response"] for r, x in zip(dist.kept, rows))
    assert all(reason == "the teacher wrote an empty response" for _, reason, _ in dist.dropped)


def test_reward_model_scorer(results, micro_base, tmp_path):
    """Any sequence-classification folder: a randomly initialised tiny Llama with the micro tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(micro_base)
    tok.chat_template = None  # a text-pair reward model
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                                    num_hidden_layers=1, num_attention_heads=2, num_labels=1,
                                                    pad_token_id=tok.pad_token_id))
    folder = tmp_path / "rm"
    rm.save_pretrained(folder)
    tok.save_pretrained(folder)
    rows = [arith(i, i, 2, str(i + 2)) for i in range(6)]
    ctx = curate.Context(seed=0, sizes={}, results=results)
    res = curate.filter_(rows, {"scorer": "reward", "model": str(folder), "top_n": 2}, ctx)
    scores, _ = curate.reward_scores(rows, {"model": str(folder)}, ctx)
    assert {r["id"] for r in res.kept} == {rows[i]["id"] for i in sorted(range(6), key=lambda i: -scores[i])[:2]}
    assert len(set(scores)) > 1 and ctx.meter.cached == 6  # the second call came from the cache


# ---------------------------------------------------------------------------------------------------------------
# Inputs: every kind, bad rows, skip_bad


def test_chat_messages_become_prompt_and_response(tmp_path):
    path = tmp_path / "chat.jsonl"
    lines = [{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
             {"id": "m2", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                                       {"role": "user", "content": "and 3+3?"},
                                       {"role": "assistant", "content": "6"}]},
             {"prompt": "plain", "response": "row"}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows = sources.read_jsonl(path)
    assert (rows[0]["id"], rows[0]["prompt"], rows[0]["response"]) == ("chat-1", "Hi?", "Hello.")
    assert rows[1]["prompt"] == "System: Be brief.\n\nUser: 2+2?\n\nAssistant: 4\n\nUser: and 3+3?"
    assert rows[1]["response"] == "6" and rows[1]["id"] == "m2" and len(rows[1]["messages"]) == 5
    assert rows[2]["prompt"] == "plain"


BAD_CHAT = [
    ({"messages": []}, r"messages: expected a non-empty list"),
    ({"messages": [{"role": "user", "content": "q"}]}, r"messages: the last turn must be the assistant's"),
    ({"messages": [{"role": "bot", "content": "q"}]}, r"messages\.0: expected \{role: system\|user\|assistant"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, r"messages: expected a user turn before"),
    ([1, 2], r"expected an object, got list"),
]


@pytest.mark.parametrize("bad,message", BAD_CHAT)
def test_bad_chat_lines_name_file_and_line(tmp_path, bad, message):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(SpecError, match=rf"chat\.jsonl:3: {message}"):
        sources.read_jsonl(path)


def test_skip_bad_counts_and_keeps_going(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\nnot json\n{"prompt": 1}\n{"prompt": "c", "response": "d"}\n')
    rows, report = sources.load_source({"kind": "jsonl", "path": str(path), "skip_bad": True})
    assert [r["prompt"] for r in rows] == ["a", "c"]
    assert (report.n_read, report.n_bad) == (4, 2) and report.bad[0].endswith("mixed.jsonl:2: invalid JSON "
                                                                              "(Expecting value)")
    path.write_text("not json\n")
    with pytest.raises(SpecError, match=r"mixed\.jsonl: no examples \(1 malformed rows skipped\)"):
        sources.load_source({"kind": "jsonl", "path": str(path), "skip_bad": True})
    path.write_text('{"id": "x", "prompt": "a", "response": "b"}\n{"id": "x", "prompt": "c", "response": "d"}\n')
    with pytest.raises(SpecError, match=r"mixed\.jsonl: id 'x' is used by more than one row"):
        sources.load_source({"kind": "jsonl", "path": str(path)})


def test_datasets_folder_source_and_its_bad_rows(tmp_path):
    from datasets import Dataset, DatasetDict

    good = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(3)]
    Dataset.from_list(good).save_to_disk(str(tmp_path / "plain"))
    DatasetDict({"train": Dataset.from_list(good + [{"question": "q", "answer": None}])}).save_to_disk(
        str(tmp_path / "dict"))
    m = parse_matrix("""
sources:
  plain: {path: PLAIN, columns: {prompt: question, response: answer}}
  dict: {path: DICT, split: train, columns: {prompt: question, response: answer}}
  dict_skip: {path: DICT, split: train, columns: {prompt: question, response: answer}, skip_bad: true}
  nosplit: {path: DICT}
arms: {a: {source: plain}, b: {source: dict}, c: {source: dict_skip}, d: {source: nosplit}}
""".replace("PLAIN", str(tmp_path / "plain")).replace("DICT", str(tmp_path / "dict")))
    rec = recipe.resolve_recipes(m)
    rows, _ = sources.load_source(rec["a"].source)
    assert [(r["id"], r["prompt"], r["response"]) for r in rows][0] == ("plain-0", "q0", "a0")
    with pytest.raises(SpecError, match=r"dict\[?.*row 3: expected an object with string fields question and "
                                        r"answer"):
        sources.load_source(rec["b"].source)
    rows, report = sources.load_source(rec["c"].source)
    assert len(rows) == 3 and report.n_bad == 1
    with pytest.raises(SpecError, match="a DatasetDict; set split to one of train"):
        sources.load_source(rec["d"].source)
    (tmp_path / "notdata").mkdir()
    with pytest.raises(SpecError, match="not a folder written by datasets' save_to_disk"):
        recipe.resolve_recipes(parse_matrix(f"arms: {{a: {{source: {tmp_path / 'notdata'}}}}}"))


def test_hub_source_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rec = recipe.resolve_recipes(parse_matrix("arms: {a: {source: 'hub:someone/sft-data'}}"))
    assert rec["a"].source == {"kind": "hub", "id": "someone/sft-data"}
    with pytest.raises(SpecError, match=r"^source hub:someone/sft-data: offline \(HF_HUB_OFFLINE"):
        sources.load_source(rec["a"].source)


# ---------------------------------------------------------------------------------------------------------------
# Recipes: fingerprints, validation, empty results, the CLI and the database


def test_recipe_fingerprints_are_stable_and_cover_models():
    text = """
sources: {pool: {size: 300}}
arms:
  d: {source: pool, steps: [dedup, {distill: {teacher: micro, max_new_tokens: 8}}]}
  f: {source: pool, steps: [{filter: {scorer: heuristic, max_words: 3}}, {diversity: 50}]}
"""
    a, b = recipe.resolve_recipes(parse_matrix(text)), recipe.resolve_recipes(parse_matrix(text))
    assert {k: r.id for k, r in a.items()} == {k: r.id for k, r in b.items()}
    assert a["d"].steps[1][1]["teacher_fingerprint"].startswith("micro-")
    other = recipe.resolve_recipes(parse_matrix(text.replace("teacher: micro", "teacher: tiny")))
    assert other["d"].id != a["d"].id and other["f"].id == a["f"].id
    assert a["f"].steps[1] == ("diversity", {"n": 50})


@pytest.mark.parametrize("steps,message", [
    ("[{filter: {scorer: verifier, treshold: 1}}]", r"arms\.a\.steps\.0\.filter\.treshold: unknown key; expected"),
    ("[{filter: astrology}]", r"arms\.a\.steps\.0\.filter\.scorer: unknown scorer 'astrology'"),
    ("[{distill: {teacher: no-such-model}}]", r"arms\.a\.steps\.0\.distill\.teacher: model 'no-such-model'"),
    ("[{balance: {n: 5}}, {shuffle: 3}]", r"arms\.a\.steps\.1: unknown step 'shuffle'"),
])
def test_bad_steps_are_named(steps, message):
    with pytest.raises(SpecError, match=message):
        recipe.resolve_recipes(parse_matrix(f"arms: {{a: {{source: skills_pool, steps: {steps}}}}}"))


def test_a_step_that_leaves_nothing_is_an_error(tmp_path):
    m = parse_matrix("sources: {pool: {size: 50}}\narms: {a: {source: pool, steps: [{filter: {scorer: heuristic, "
                     "format: 'zzz'}}]}}")
    with pytest.raises(curate.RecipeError, match=r"arm a: step 0 \(filter\) left no examples of 50"):
        build.build(recipe.resolve_recipes(m), tmp_path, log=lambda *a: None)
    assert not list((tmp_path / "data").glob("*"))  # nothing half-written


def test_quality_vs_quantity_preset_resolves():
    """The preset's recipes are valid (its teacher swapped for micro, so this runs without SmolLM2)."""
    from harness.run.plan import plan
    from harness.spec import PRESETS_DIR

    path = PRESETS_DIR / "quality-vs-quantity.yaml"
    p = plan(parse_matrix(path.read_text().replace("smollm2-135m", "micro"), str(path)))
    assert len(p.recipes) == 14 and len(p.cells) == 14 * 2 * 3
    assert p.recipes["length-like-filter"].steps[0][1]["like_dataset"] == p.recipes["filter"].id
    assert p.recipes["random-like-distill"].steps[0][1]["like_dataset"] == p.recipes["distill"].id
    assert p.recipes["best-of-k"].steps[2][1]["shots"][0] == ["What is 7 + 5?", "12"]


def _lengths_pool(n=400, seed=0):
    import random

    rng = random.Random(seed)
    return [row(i, f"q{i}", "w" * rng.randint(1, 200)) for i in range(n)]


def test_longest_keeps_the_n_longest_with_deterministic_ties():
    rows = [row(i, "q", r) for i, r in enumerate(["aa", "aaaa", "a", "bbbb", "cc", "dddd"])]
    res = curate.longest(rows, {"n": 3}, CTX)
    assert [r["id"] for r in res.kept] == ["r1", "r3", "r5"]  # three of length 4
    res = curate.longest(rows, {"n": 2}, CTX)
    assert [r["id"] for r in res.kept] == ["r1", "r3"]  # a tie at the cut: the earlier rows win
    why = dict((i, (reason, score)) for i, reason, score in res.dropped)
    assert why["r5"] == ("response 4 chars: not among the 2 longest (the shortest kept has 4)", 4.0)
    assert why["r2"][1] == 1.0 and len(res.dropped) == 4
    words = curate.longest([row(0, "q", "a b c"), row(1, "q", "abcdefgh")], {"n": 1, "by": "words"}, CTX)
    assert [r["id"] for r in words.kept] == ["r0"]
    like = curate.longest(rows, {"like": "cur"}, curate.Context(seed=0, sizes={"cur": 1}))
    assert [r["id"] for r in like.kept] == ["r1"]


def test_length_matched_random_matches_the_target_lengths():
    """The control has the target's size and response-length distribution: total within 2%, every decile within
    5%, where a plain random subset of the same size is ~2x off (the target is the longest quarter of the pool)."""
    import numpy as np

    pool = _lengths_pool()
    target = curate.longest(pool, {"n": 100}, CTX).kept
    ctx = curate.Context(seed=0, sizes={"cur": 100}, arms={"cur": target})
    res = curate.random_subset(pool, {"like": "cur", "match": "length"}, ctx)
    got, want = [len(r["response"]) for r in res.kept], [len(r["response"]) for r in target]
    assert len(got) == 100 and len({r["id"] for r in res.kept}) == 100
    assert abs(sum(got) - sum(want)) <= 0.02 * sum(want)
    q = np.linspace(0.1, 0.9, 9)
    np.testing.assert_allclose(np.quantile(got, q), np.quantile(want, q), rtol=0.05)
    assert res.score_stats["target_total"] == sum(want) and res.score_stats["total"] == sum(got)
    assert len(res.dropped) == 300 and res.dropped[0][1].startswith("not drawn by the length-matched random subset")
    plain = curate.random_subset(pool, {"like": "cur"}, ctx).kept
    assert sum(len(r["response"]) for r in plain) < 0.7 * sum(want)
    shorter = curate.random_subset(pool, {"like": "cur", "match": "length"}, curate.Context(
        seed=0, sizes={"cur": 50}, arms={"cur": pool[:50]}))  # an unsorted target: matched too, not only the tail
    assert abs(sum(len(r["response"]) for r in shorter.kept) - sum(len(r["response"]) for r in pool[:50])) <= 50
    again = curate.random_subset(pool, {"like": "cur", "match": "length"}, ctx)
    assert [r["id"] for r in again.kept] == [r["id"] for r in res.kept]  # seeded


def test_baseline_arms_build_with_provenance_and_roles(tmp_path):
    """longest and the length-matched control in a matrix: built after the arm they copy, decisions recorded,
    and their roles known to the statistics."""
    from harness.analysis import stats

    m = parse_matrix("""
sources: {pool: {size: 300}}
arms:
  cur: {source: pool, steps: [{filter: verifier}, {balance: 60}]}
  len: {source: pool, steps: [{random: {like: cur, match: length}}]}
  long: {source: pool, steps: [{longest: {like: cur}}]}
  dose: {source: pool, sizes: [50, 100]}
""")
    assert list(m.arms) == ["cur", "len", "long", "dose-50", "dose-100"]
    assert m.arms["dose-100"].steps == [{"random": 100}]
    recipes = recipe.resolve_recipes(m)
    assert recipes["len"].steps[0][1]["like_dataset"] == recipes["cur"].id
    built = build.build(recipes, tmp_path, log=lambda *a: None)
    cards = {a: json.loads((p / "card.json").read_text()) for a, p in built.items()}
    n = cards["cur"]["n_examples"]
    assert cards["len"]["n_examples"] == cards["long"]["n_examples"] == n
    assert cards["len"]["steps"][0]["score_stats"]["match"] == "length"
    assert build.build(recipes, tmp_path, log=lambda *a: None) == built  # cached: the target's rows are read back
    roles = {a: stats.arm_role(c["recipe"]) for a, c in cards.items()}
    assert roles == {"cur": "curated", "len": "length-matched random", "long": "longest",
                     "dose-50": "random control", "dose-100": "random control"}
    with store.writer(tmp_path / "harness.duckdb") as con:
        for path in built.values():
            store.ingest_dataset(con, path)
        why = con.execute("SELECT d.step, count(*), min(reason) FROM data_decisions d JOIN datasets USING "
                          "(dataset_id) WHERE dataset_id IN (?, ?) GROUP BY ALL ORDER BY 1",
                          [recipes["len"].id, recipes["long"].id]).fetchall()
    assert [(s, c) for s, c, _ in why] == [("longest", 300 - n), ("random", 300 - n)]
    assert "not among the" in why[0][2] and "length-matched" in why[1][2]


def test_sizes_expand_into_a_dose_response_series(tmp_path):
    m = parse_matrix("arms:\n  bulk: {source: skills_pool, steps: [dedup], sizes: [1000, 4000, 1500]}\n")
    assert {k: a.steps for k, a in m.arms.items()} == {
        "bulk-1k": ["dedup", {"random": 1000}], "bulk-4k": ["dedup", {"random": 4000}],
        "bulk-1500": ["dedup", {"random": 1500}]}
    with pytest.raises(SpecError, match=r"m\.yaml:2: arms\.bulk\.sizes: expected a list of positive integers"):
        parse_matrix("arms:\n  bulk: {sizes: [0]}\n", "m.yaml")


def test_k_center_never_picks_a_row_twice():
    import numpy as np

    x = np.eye(3, dtype=np.float32)[[0, 0, 1, 1, 2, 2]]  # three points, each twice
    chosen, dist, nearest = curate.k_center(x, 5, seed=0)
    assert len(set(chosen)) == 5 and {int(i) // 2 for i in chosen} == {0, 1, 2}  # the 3 points first, then repeats
    assert not dist.any() and all(nearest[i] == i for i in chosen)
