"""Recipes (harness.data.recipe): arms resolved into fingerprinted step lists, bad steps named by their key."""

import pytest

from harness.data import recipe
from harness.spec import SpecError, parse_matrix


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
