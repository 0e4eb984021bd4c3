"""Building data sets (harness.data.build): cards, decisions, the cache, arms built after the arms they copy."""

import json

import pytest

from harness import store
from harness.data import build, curate, recipe
from harness.spec import parse_matrix


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


def test_arms_of_one_source_read_it_once_and_each_card_counts_the_read(tmp_path, monkeypatch):
    import time

    m = parse_matrix("sources: {pool: {size: 300}}\narms: {a: {source: pool, steps: [{filter: verifier}]}, "
                     "b: {source: pool, steps: [dedup]}, c: {source: pool}}")
    recipes = recipe.resolve_recipes(m)
    alone = {arm: build.build(recipes, tmp_path / arm, [arm], lambda *a: None)[arm] for arm in recipes}
    reads = []

    def slow_read(source):
        reads.append(source)
        time.sleep(0.3)
        return load_source(source)

    load_source = build.load_source
    monkeypatch.setattr(build, "load_source", slow_read)
    together = build.build(recipes, tmp_path / "together", log=lambda *a: None)
    assert len(reads) == 1
    for arm, folder in together.items():
        assert (folder / "data.jsonl").read_bytes() == (alone[arm] / "data.jsonl").read_bytes()
        assert json.loads((folder / "card.json").read_text())["build_seconds"] >= 0.3


def test_a_step_that_leaves_nothing_is_an_error(tmp_path):
    m = parse_matrix("sources: {pool: {size: 50}}\narms: {a: {source: pool, steps: [{filter: {scorer: heuristic, "
                     "format: 'zzz'}}]}}")
    with pytest.raises(curate.RecipeError, match=r"arm a: step 0 \(filter\) left no examples of 50"):
        build.build(recipe.resolve_recipes(m), tmp_path, log=lambda *a: None)
    assert not list((tmp_path / "data").glob("*"))  # nothing half-written


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
