import json

import pytest

from harness.data import build, recipe, sources
from harness.data import curate, world
from harness.spec import SpecError, parse_matrix

CTX = curate.Context(seed=0, sizes={})


def row(i, prompt, response, **kw):
    return {"id": f"r{i}", "prompt": prompt, "response": response, **kw}


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


def test_balance_and_random_like():
    rows = [row(i, f"p{i}", "x", skill="a" if i < 30 else "b") for i in range(40)]
    bal = curate.balance(rows, {"n": 20}, CTX)
    assert sorted(r["skill"] for r in bal.kept) == ["a"] * 10 + ["b"] * 10
    rnd = curate.random_subset(rows, {"like": "cur"}, curate.Context(seed=0, sizes={"cur": 7}))
    assert len(rnd.kept) == 7 and len(rnd.dropped) == 33
    again = curate.random_subset(rows, {"like": "cur"}, curate.Context(seed=0, sizes={"cur": 7}))
    assert [r["id"] for r in rnd.kept] == [r["id"] for r in again.kept]


def test_pool_defects_are_verifiable_and_eval_prompts_never_leak():
    pool = world.generate_pool(size=2000, seed=0)
    clean = [r for r in pool if r["defect"] == ""]
    assert all(world.verify(r["skill"], r["op"], tuple(r["params"]), r["response"]) for r in clean)
    wrong = [r for r in pool if r["defect"] == "wrong"]
    assert wrong and not any(world.verify(r["skill"], r["op"], tuple(r["params"]), r["response"]) for r in wrong)
    eval_prompts = {x["prompt"] for rows in world.eval_items().values() for x in rows}
    assert not eval_prompts & {r["prompt"] for r in pool}


def test_recipe_builds_cache_and_record_decisions(tmp_path):
    m = parse_matrix("""
sources: {pool: {size: 400}}
arms:
  cur: {source: pool, steps: [{filter: verifier}, dedup, {balance: {n: 100}}]}
  ctl: {source: pool, steps: [{random: {like: cur}}]}
""")
    recipes = recipe.resolve_recipes(m)
    built = build.build(recipes, tmp_path, log=lambda *a: None)
    cards = {arm: json.loads((built[arm] / "card.json").read_text()) for arm in built}
    assert cards["ctl"]["n_examples"] == cards["cur"]["n_examples"] <= 100
    assert [s["step"] for s in cards["cur"]["steps"]] == ["filter", "dedup", "balance"]
    assert cards["cur"]["steps"][0]["n_in"] == 400
    assert cards["ctl"]["parent"] == recipes["cur"].id
    import pyarrow.parquet as pq
    dec = pq.read_table(built["cur"] / "decisions.parquet").to_pylist()
    assert len(dec) == 400 - cards["cur"]["n_examples"]  # every dropped example has a reason
    assert recipe.resolve_recipes(m)["cur"].id == recipes["cur"].id  # recipe fingerprints are stable
    mtime = (built["cur"] / "card.json").stat().st_mtime
    build.build(recipes, tmp_path, log=lambda *a: None)
    assert (built["cur"] / "card.json").stat().st_mtime == mtime  # cached, not rebuilt


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(SpecError, match=r"sft\.jsonl:2: expected an object with string fields prompt and response"):
        sources.read_jsonl(path)
    path.write_text('{"prompt": "a", "response": "b"}\nnot json\n')
    with pytest.raises(SpecError, match=r"sft\.jsonl:2: invalid JSON"):
        sources.read_jsonl(path)
