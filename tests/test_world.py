"""The skills world (harness.data.world): a seeded fictional world, verifiable items, and a pool with planted
defects that never leaks an evaluation prompt."""

import pytest

from harness.data import world


def test_pool_defects_are_verifiable_and_eval_prompts_never_leak():
    pool = world.generate_pool(size=2000, seed=0)
    clean = [r for r in pool if r["defect"] == ""]
    assert all(world.verify(r["skill"], r["op"], tuple(r["params"]), r["response"]) for r in clean)
    wrong = [r for r in pool if r["defect"] == "wrong"]
    assert wrong and not any(world.verify(r["skill"], r["op"], tuple(r["params"]), r["response"]) for r in wrong)
    eval_prompts = {x["prompt"] for rows in world.eval_items().values() for x in rows}
    assert not eval_prompts & {r["prompt"] for r in pool}


def test_same_seed_same_world_other_seed_other_world():
    a, b, other = world.build_world(0), world.build_world(0), world.build_world(1)
    assert a == b and a != other
    assert [c.name for c in a.countries] != [c.name for c in other.countries]
    assert world.generate_pool(size=200, seed=0) == world.generate_pool(size=200, seed=0)
    assert world.generate_pool(size=200, seed=0) != world.generate_pool(size=200, seed=1)


def test_facts_are_consistent_and_unambiguous():
    """Each country has its own name, capital, language and currency (a question has one answer), and the items,
    the verifier and the multiple-choice questions all agree on them."""
    w = world.build_world()
    assert len(w.countries) == world.N_COUNTRIES
    for relation in ("name", "capital", "language", "currency"):
        assert len({getattr(c, relation) for c in w.countries}) == world.N_COUNTRIES, relation
    names = [c.name for c in w.countries] + [c.capital for c in w.countries]
    assert len(set(names)) == len(names)  # no capital shares a country's name
    c = w.countries[3]
    item = world.make_item("facts", "capital", (3,))
    assert item.answer == c.capital and world.render(item, world.TEMPLATES["facts"]["capital"][0]) == \
        f"What is the capital of {c.name}?"
    assert world.verify("facts", "capital", (3,), f"  {c.capital}\n") and not world.verify("facts", "capital", (3,),
                                                                                            w.countries[4].capital)
    for q in world.fact_mc_items(n=20):
        country = next(x for x in w.countries if x.name in q["question"])
        assert q["choices"][q["label"]] in (country.capital, country.language, country.currency, country.animal)
        assert len(set(q["choices"])) == 4


def test_items_answer_their_question_and_unknown_ops_are_named():
    assert world.make_item("arith", "sub", (9, 4)).answer == "5"
    assert world.make_item("format", "spell", (12,)).answer == "twelve"
    assert world.make_item("format", "digit", ("seven",)).answer == "7"
    assert world.make_item("format", "count", ("a", "b", "c")).answer == "3"
    assert world.make_item("words", "opposite", ("hot",)).answer == "cold"
    with pytest.raises(ValueError, match=r"unknown skill/op arith/mul; expected one of arith/add"):
        world.make_item("arith", "mul", (2, 3))
