"""Curation steps (harness.data.curate) on small pools with known answers, and the model-backed steps on micro."""

import json

import pytest

from harness.data import curate, generate, world
from harness.data.curate import ngrams

from helpers import CTX, arith, row


def test_dedup_removes_exact_and_near_duplicates_keeps_first():
    rows = [row(0, "What is the capital of Wellucor?", "Trafen"),
            row(1, "what is the capital of wellucor ?", "Trafen"),  # same after normalising
            row(2, "What is the captial of Wellucor?", "Trafen"),  # one typo: a near duplicate
            row(3, "What is the capital of Halishum?", "Rami"),  # a different question
            row(4, "What is 7 + 8?", "15"), row(5, "What is 7 + 9?", "16")]  # similar shape, different item
    res = curate.dedup(rows, {"threshold": 0.6}, CTX)
    assert [r["id"] for r in res.kept] == ["r0", "r3", "r4", "r5"]
    reasons = {i: reason for i, reason, _ in res.dropped}
    assert reasons["r1"] == "exact duplicate of r0" and reasons["r2"].startswith("near duplicate of r0")


def test_verifier_filter_drops_planted_wrong_answers():
    rows = [row(0, "What is 2 + 3?", "5", skill="arith", op="add", params=[2, 3]),
            row(1, "What is 2 + 4?", "7", skill="arith", op="add", params=[2, 4]),  # planted wrong answer
            row(2, "Spell out the number 3.", "Sure! three", skill="format", op="spell", params=[3])]  # filler
    res = curate.filter_(rows, {"scorer": "verifier"}, CTX)
    assert [r["id"] for r in res.kept] == ["r0"]
    assert {i for i, _, _ in res.dropped} == {"r1", "r2"}
    assert res.score_stats["mean"] == pytest.approx(1 / 3)


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


def test_balance_and_random_like():
    rows = [row(i, f"p{i}", "x", skill="a" if i < 30 else "b") for i in range(40)]
    bal = curate.balance(rows, {"n": 20}, CTX)
    assert sorted(r["skill"] for r in bal.kept) == ["a"] * 10 + ["b"] * 10
    rnd = curate.random_subset(rows, {"like": "cur"}, curate.Context(seed=0, sizes={"cur": 7}))
    assert len(rnd.kept) == 7 and len(rnd.dropped) == 33
    again = curate.random_subset(rows, {"like": "cur"}, curate.Context(seed=0, sizes={"cur": 7}))
    assert [r["id"] for r in rnd.kept] == [r["id"] for r in again.kept]


def _three_kinds(n_each=12):
    arith = [row(i, f"What is {i % 7} + {i % 5}?", "x") for i in range(n_each)]
    facts = [row(100 + i, f"Name the capital city of Country{i}.", "x") for i in range(n_each)]
    words = [row(200 + i, f"Give the antonym of word{i}.", "x") for i in range(n_each)]
    return arith + facts + words


@pytest.mark.parametrize("method", ["kcenter", pytest.param("clusters", marks=pytest.mark.slow)])
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


def test_embedding_near_duplicates_across_blocks():
    import numpy as np

    x = np.eye(5, dtype=np.float32)[[0, 1, 0, 2, 1, 3]]  # rows 2 and 4 repeat rows 0 and 1
    for block in (1, 2, 64):
        m = curate.duplicates._embedding_dups(x, 0.99, block=block)
        assert [a if a is None else a[0] for a in m] == [None, None, 0, None, 1, None]


def test_k_center_never_picks_a_row_twice():
    import numpy as np

    x = np.eye(3, dtype=np.float32)[[0, 0, 1, 1, 2, 2]]  # three points, each twice
    chosen, dist, nearest = curate.k_center(x, 5, seed=0)
    assert len(set(chosen)) == 5 and {int(i) // 2 for i in chosen} == {0, 1, 2}  # the 3 points first, then repeats
    assert not dist.any() and all(nearest[i] == i for i in chosen)


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


@pytest.mark.slow
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


def test_shingle_codes_are_the_character_5_grams():
    """The vectorised codes are exactly the texts' 5-grams (texts shorter than 5 characters: the whole text)."""
    texts = ["hello world", "abc", "", "abcde", "the cat sat on the mat"]
    codes, offsets = ngrams.shingles(texts)
    for i, t in enumerate(texts):
        grams = {t[j:j + 5] for j in range(max(1, len(t) - 4))}
        got = codes[offsets[i]:offsets[i + 1]].tolist()
        assert len(set(got)) == len(grams)
        if len(t) >= 5:
            assert {c.to_bytes(5, "big").decode() for c in got} == grams


def test_minhash_dedup_agrees_with_an_all_pairs_search():
    """The LSH only picks candidates: the kept set is that of comparing every row with every earlier kept one
    (exact Jaccard of 5-gram sets >= 0.6), up to pairs just above the threshold no band brings together."""
    pool = world.generate_pool(3000, seed=1)
    ctx = curate.Context(seed=0, sizes={})
    exact = curate.dedup(pool, {"method": "exact"}, ctx).kept
    sets = [{t[j:j + 5] for j in range(max(1, len(t) - 4))}
            for t in (ngrams.normalise(r["prompt"] + " " + r["response"]) for r in exact)]
    ref: list[int] = []
    for i, s in enumerate(sets):
        if not any(len(s & sets[j]) / len(s | sets[j]) >= 0.6 for j in ref):
            ref.append(i)
    kept = {r["id"] for r in curate.dedup(pool, {}, ctx).kept}
    differ = kept ^ {exact[i]["id"] for i in ref}
    assert len(exact) - len(ref) > 100 and len(differ) <= 2, differ


def chat(i, *turns, system=None) -> dict:
    """A chat row as sources.to_example makes it: its messages, and its history and last turn as prompt/response."""
    from harness.data import sources

    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": ("user", "assistant")[k % 2], "content": t} for k, t in enumerate(turns)]
    return sources.to_example({"id": f"c{i}", "messages": messages}, "test", f"c{i}")


def test_curation_reads_the_whole_conversation_of_a_chat_row():
    """dedup compares whole conversations by default (two chats that share their last exchange but not their
    first are different), `on: prompt | response` narrows it; heuristic rules hold every assistant turn; longest and
    the length-matched control count every assistant turn."""
    a = chat(0, "Tell me about cats.", "Cats are small carnivorous mammals kept as pets.", "And dogs?",
             "Dogs are domesticated descendants of wolves.")
    b = chat(1, "Tell me about lions.", "Lions are large cats of Africa.", "And dogs?",
             "Dogs are domesticated descendants of wolves.")
    c = chat(2, "Tell me about cats.", "Cats are small carnivorous mammals kept as pets.", "And dogs?",
             "Dogs are domesticated descendants of wolves.", system="Be brief.")
    assert [r["id"] for r in curate.dedup([a, b], {}, CTX).kept] == ["c0", "c1"]
    assert [r["id"] for r in curate.dedup([a, b], {"on": "response"}, CTX).kept] == ["c0", "c1"]
    exact = {"method": "exact"}
    assert [r["id"] for r in curate.dedup([a, c], exact | {"on": "response"}, CTX).kept] == ["c0"]
    assert [r["id"] for r in curate.dedup([a, c], exact, CTX).kept] == ["c0", "c2"]  # the system turn differs
    bad = chat(3, "Hi", "x" * 5000, "Thanks", "You're welcome.")  # its first answer breaks max_chars
    kept = curate.filter_([a, bad], {"scorer": "heuristic", "threshold": 1.0}, CTX).kept
    assert [r["id"] for r in kept] == ["c0"]
    assert [r["id"] for r in curate.longest([a, b, bad], {"n": 1}, CTX).kept] == ["c3"]
    with pytest.raises(curate.StepError, match="expected prompt, response or conversation"):
        curate.parse_step({"dedup": {"on": "everything"}})


def test_diversity_embeds_whole_conversations_of_chat_rows(monkeypatch):
    seen = []
    monkeypatch.setattr("harness.data.curate.subsets.embed",
                        lambda texts, *a: seen.append(texts) or __import__("numpy").eye(len(texts)))
    rows = [chat(i, f"q{i}", f"a{i}", f"q{i}b", f"a{i}b") for i in range(3)]
    curate.diversity(rows, {"n": 2}, CTX)
    curate.diversity([row(i, f"p{i}", f"r{i}") for i in range(3)], {"n": 2}, CTX)
    assert seen[0][0] == "q0\na0\nq0b\na0b" and seen[1][0] == "p0"  # chat: the conversation; else the prompt
