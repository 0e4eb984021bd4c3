"""Data arms: a source (the skills-world pool or a user file) and a recipe of curation steps -> a cached data set.

A data set's id is a hash of its resolved source and steps (not of the arm's name), so arms and matrices that ask
for the same data share one build under results/data/<id>/: data.jsonl, card.json (recipe, counts per step) and
decisions.parquet (every dropped example and why).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness import cost, curate, world
from harness.spec import Matrix, SpecError, content_id


@dataclass(frozen=True)
class Recipe:
    source: dict  # resolved source spec
    steps: list[tuple[str, dict]]  # (step name, params) with `like` resolved to a data set id
    seed: int
    id: str


def _source_spec(name: str, m: Matrix, arm: str) -> dict:
    if name in m.sources:
        spec = dict(m.sources[name])
        kind = spec.pop("kind", "skills_pool")
    elif name == "skills_pool":
        spec, kind = {}, "skills_pool"
    elif name.endswith(".jsonl"):
        path = Path(name)
        if not path.exists():
            raise SpecError(f"arms.{arm}.source: file not found: {path}")
        return {"kind": "jsonl", "path": str(path.resolve()),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    else:
        known = ", ".join(["skills_pool", *m.sources]) or "skills_pool"
        raise SpecError(f"arms.{arm}.source: unknown source {name!r}; expected one of {known} or a .jsonl file")
    if kind != "skills_pool":
        raise SpecError(f"sources.{name}.kind: unknown kind {kind!r}; expected skills_pool")
    allowed = {"size", "seed", "mix", "defects"}
    if set(spec) - allowed:
        raise SpecError(f"sources.{name}: unknown key {sorted(set(spec) - allowed)[0]!r}; expected {sorted(allowed)}")
    return {"kind": "skills_pool", "size": int(spec.get("size", 8000)), "seed": int(spec.get("seed", 0)),
            "mix": {**world.DEFAULT_MIX, **spec.get("mix", {})},
            "defects": {**world.DEFAULT_DEFECTS, **spec.get("defects", {})}}


def _step(raw, arm: str, i: int) -> tuple[str, dict]:
    """'dedup' | {dedup: {...}} | {filter: verifier} (a scalar is the step's main parameter)."""
    if isinstance(raw, str):
        name, params = raw, {}
    elif isinstance(raw, dict) and len(raw) == 1:
        name, params = next(iter(raw.items()))
        if not isinstance(params, dict):
            params = {"filter": {"scorer": params}, "random": {"n": params}, "balance": {"n": params}}.get(
                name, {"value": params})
    else:
        raise SpecError(f"arms.{arm}.steps.{i}: expected a step name or a one-key mapping, got {raw!r}")
    if name not in curate.STEPS:
        raise SpecError(f"arms.{arm}.steps.{i}: unknown step {name!r}; expected one of {', '.join(curate.STEPS)}")
    return name, params


def resolve_recipes(m: Matrix) -> dict[str, Recipe]:
    """Arm name -> Recipe with a content id; arms referring to others (random like: X) are resolved after X."""
    out: dict[str, Recipe] = {}
    visiting: set[str] = set()

    def resolve(arm: str) -> Recipe:
        if arm in out:
            return out[arm]
        if arm in visiting:
            raise SpecError(f"arms.{arm}: circular reference through `like`")
        visiting.add(arm)
        spec = m.arms[arm]
        source = _source_spec(spec.source, m, arm)
        steps = []
        for i, raw in enumerate(spec.steps):
            name, params = _step(raw, arm, i)
            if "like" in params:
                if params["like"] not in m.arms:
                    raise SpecError(f"arms.{arm}.steps.{i}.like: unknown arm {params['like']!r}; "
                                    f"expected one of {', '.join(m.arms)}")
                params = {**params, "like_dataset": resolve(params["like"]).id}
            steps.append((name, params))
        seed = source.get("seed", 0)
        rid = content_id({"source": source, "steps": [[n, {k: v for k, v in p.items() if k != "like"}]
                                                      for n, p in steps]})
        out[arm] = Recipe(source, steps, seed, rid)
        visiting.discard(arm)
        return out[arm]

    for arm in m.arms:
        resolve(arm)
    return out


def load_source(source: dict) -> list[dict]:
    if source["kind"] == "skills_pool":
        return world.generate_pool(source["size"], source["seed"], source["mix"], source["defects"])
    return read_jsonl(Path(source["path"]))


def read_jsonl(path: Path) -> list[dict]:
    """User SFT data: one JSON object per line with string `prompt` and `response`."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SpecError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) \
                    or not isinstance(row.get("response"), str):
                raise SpecError(f"{path}:{n}: expected an object with string fields prompt and response")
            rows.append({"id": str(row.get("id", f"{path.stem}-{n}")), **row})
    return rows


def dataset_dir(results: Path, dataset_id: str) -> Path:
    return results / "data" / dataset_id


def load_rows(results: Path, dataset_id: str) -> list[dict]:
    path = dataset_dir(results, dataset_id) / "data.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def build(recipes: dict[str, Recipe], results: Path, arms: list[str] | None = None, log=print) -> dict[str, Path]:
    """Build (or find cached) the data set of each arm; returns arm -> folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    order: list[str] = []

    def visit(arm: str) -> None:  # arms that others refer to (random like: X) are built first
        for _, p in recipes[arm].steps:
            if "like" in p:
                visit(p["like"])
        if arm not in order:
            order.append(arm)

    for arm in arms or recipes:
        visit(arm)
    for arm in order:
        r = recipes[arm]
        final = dataset_dir(results, r.id)
        if (final / "card.json").exists():
            out[arm] = final
            sizes[arm] = json.loads((final / "card.json").read_text())["n_examples"]
            continue
        t0 = time.perf_counter()
        rows = load_source(r.source)
        steps_card, decisions = [], []
        ctx = curate.Context(seed=r.seed, sizes=sizes)
        for i, (name, params) in enumerate(r.steps):
            res = curate.STEPS[name](rows, params, ctx)
            steps_card.append({"step": name, "params": params, "n_in": len(rows), "n_out": len(res.kept),
                               "score_stats": res.score_stats})
            decisions += [(r.id, i, name, ex_id, reason, score) for ex_id, reason, score in res.dropped]
            rows = res.kept
        if not rows:
            raise curate.RecipeError(f"arm {arm}: the recipe left no examples")
        body = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        card = {"dataset_id": r.id, "recipe": {"source": r.source, "steps": [[n, p] for n, p in r.steps]},
                "parent": next((p["like_dataset"] for _, p in r.steps if "like_dataset" in p), None),
                "n_examples": len(rows), "n_by_skill": dict(Counter(x.get("skill", "all") for x in rows)),
                "content_hash": hashlib.sha256(body.encode()).hexdigest(), "steps": steps_card,
                "build_seconds": time.perf_counter() - t0,
                "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        # curation is paid for by the arm that needs it (an estimate, like every price: see cost.py)
        card["device_hours"] = card["build_seconds"] / 3600
        card["cost_usd"] = card["device_hours"] * cost.price_per_hour(cost.hardware("cpu", os.cpu_count() or 1))
        tmp = final.parent / f".{r.id}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "data.jsonl").write_text(body)
        cols = list(zip(*decisions)) if decisions else [[]] * 6
        pq.write_table(pa.table({"dataset_id": pa.array(cols[0], pa.string()),
                                 "step_index": pa.array(cols[1], pa.int32()), "step": pa.array(cols[2], pa.string()),
                                 "example_id": pa.array(cols[3], pa.string()), "reason": pa.array(cols[4], pa.string()),
                                 "score": pa.array(cols[5], pa.float64())}), tmp / "decisions.parquet")
        (tmp / "card.json").write_text(json.dumps(card, indent=1))
        try:
            os.replace(tmp, final)
        except OSError:  # built concurrently by another process: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
        out[arm], sizes[arm] = final, len(rows)
        log(f"data {arm}: {len(rows):,} examples ({' -> '.join(str(s['n_out']) for s in steps_card) or 'source'}) "
            f"in {card['build_seconds']:.1f}s")
    return out
