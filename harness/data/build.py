"""Building a data arm: its source through its recipe's curation steps -> a cached data set folder.

results/data/<id>/ holds data.jsonl, card.json (recipe, counts and score distributions per step, what models cost)
and decisions.parquet (every dropped example, its text and why); the folder is complete or absent.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path

from harness.core.atomic import atomic_dir
from harness.data import curate, generate
from harness.data.recipe import Recipe
from harness.data.sources import SourceReport, load_source
from harness.spec import SpecError
from harness.train import cost


def dataset_dir(results: Path, dataset_id: str) -> Path:
    return results / "data" / dataset_id


def load_rows(results: Path, dataset_id: str) -> list[dict]:
    path = dataset_dir(results, dataset_id) / "data.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(r: Recipe, final: Path, body: str, card: dict, decisions: list[tuple]) -> None:
    """data.jsonl, decisions.parquet and card.json into a temp folder, renamed into place: complete or absent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = list(zip(*decisions)) if decisions else [[]] * 8
    types = {"dataset_id": pa.string(), "step_index": pa.int32(), "step": pa.string(), "example_id": pa.string(),
             "reason": pa.string(), "score": pa.float64(), "prompt": pa.string(), "response": pa.string()}
    # keep_existing: built concurrently by another process, theirs is as good as ours
    with atomic_dir(final, keep_existing=True) as tmp:
        (tmp / "data.jsonl").write_text(body)
        pq.write_table(pa.table({c: pa.array(v, t) for (c, t), v in zip(types.items(), cols)}),
                       tmp / "decisions.parquet")
        (tmp / "card.json").write_text(json.dumps(card, indent=1))


def _order(recipes: dict[str, Recipe], arms: list[str]) -> list[str]:
    """The arms to build, those that others refer to (random like: X) first."""
    order: list[str] = []

    def visit(arm: str) -> None:
        for _, p in recipes[arm].steps:
            if "like" in p:
                visit(p["like"])
        if arm not in order:
            order.append(arm)

    for arm in arms:
        visit(arm)
    return order


def _curate(arm: str, r: Recipe, rows: list[dict], sizes: dict[str, int], rows_of: dict[str, list[dict]],
            results: Path):
    """Run the recipe's steps over the source rows -> (kept rows, one card entry per step, dropped rows, meter)."""
    steps_card, decisions, total = [], [], generate.Meter()
    for i, (name, params) in enumerate(r.steps):
        ctx = curate.Context(seed=r.seed, sizes=sizes, arms=rows_of, results=results)
        t1 = time.perf_counter()
        res = curate.STEPS[name](rows, params, ctx)
        by_id = {x["id"]: x for x in rows}
        steps_card.append({"step": name, "params": params, "n_in": len(rows), "n_out": len(res.kept),
                           "score_stats": res.score_stats, "seconds": time.perf_counter() - t1,
                           "generated_tokens": ctx.meter.generated_tokens,
                           "compute_seconds": ctx.meter.compute_seconds,
                           "cache": {"computed": ctx.meter.computed, "cached": ctx.meter.cached}})
        decisions += [(r.id, i, name, ex_id, reason, score, by_id[ex_id]["prompt"], by_id[ex_id]["response"])
                      for ex_id, reason, score in res.dropped]
        total.add(ctx.meter)
        rows = res.kept
        if not rows:
            raise curate.RecipeError(f"arm {arm}: step {i} ({name}) left no examples of {steps_card[-1]['n_in']}")
    return rows, steps_card, decisions, total


def _card(r: Recipe, rows: list[dict], body: str, report: SourceReport, n_source: int, steps_card: list[dict],
          total: generate.Meter, t0: float) -> dict:
    card = {"dataset_id": r.id, "recipe": {"source": r.source, "steps": [[n, p] for n, p in r.steps]},
            "parent": next((p["like_dataset"] for _, p in r.steps if "like_dataset" in p), None),
            "n_examples": len(rows), "n_by_skill": dict(Counter(x.get("skill", "all") for x in rows)),
            "n_source": n_source, "n_bad": report.n_bad, "bad_examples": report.bad,
            "content_hash": hashlib.sha256(body.encode()).hexdigest(), "steps": steps_card,
            "build_seconds": time.perf_counter() - t0,
            "generated_tokens": total.generated_tokens,
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    # curation is paid for by the arm that needs it (an estimate, like every price: see cost.py): the build's wall
    # time, or the model time its generations cost when cached ones (another arm's) made the build quicker
    card["device_hours"] = max(card["build_seconds"], total.compute_seconds) / 3600
    device = generate._device() if total.compute_seconds else "cpu"
    card["cost_usd"] = card["device_hours"] * cost.price_per_hour(cost.hardware(device, os.cpu_count() or 1))
    return card


def build(recipes: dict[str, Recipe], results: Path, arms: list[str] | None = None, log=print) -> dict[str, Path]:
    """Build (or find cached) the data set of each arm; returns arm -> folder."""
    out: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    rows_of: dict[str, list[dict]] = {}  # arms whose rows another arm's step needs (random: {match: length})
    needed = {p["like"] for r in recipes.values() for _, p in r.steps if p.get("match") == "length"}
    sources: dict[str, tuple] = {}  # arms of one source read it once (the demo's three: 0.4 s each)
    for arm in _order(recipes, arms or list(recipes)):
        r = recipes[arm]
        final = dataset_dir(results, r.id)
        if (final / "card.json").exists():
            out[arm] = final
            sizes[arm] = json.loads((final / "card.json").read_text())["n_examples"]
            if arm in needed:
                rows_of[arm] = load_rows(results, r.id)
            continue
        t0 = time.perf_counter()
        key = json.dumps(r.source, sort_keys=True)
        if key not in sources:
            sources[key] = *load_source(r.source), time.perf_counter() - t0
        rows, report, reading = sources[key]
        rows, t0 = list(rows), time.perf_counter() - reading  # every arm's card counts reading its source
        n_source = len(rows)
        rows, steps_card, decisions, total = _curate(arm, r, rows, sizes, rows_of, results)
        body = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        card = _card(r, rows, body, report, n_source, steps_card, total, t0)
        _write(r, final, body, card, decisions)
        out[arm], sizes[arm] = final, len(rows)
        if arm in needed:
            rows_of[arm] = rows
        log(f"data {arm}: {len(rows):,} examples ({' -> '.join(str(s['n_out']) for s in steps_card) or 'source'}) "
            f"in {card['build_seconds']:.1f}s")
    return out


def find(results: Path, prefix: str) -> Path:
    """The data set folder whose id is `prefix` or starts with it."""
    hits = sorted(p for p in (results / "data").glob(f"{prefix}*") if (p / "card.json").exists()) \
        if (results / "data").is_dir() else []
    if len(hits) != 1:
        raise SpecError(f"data set {prefix!r}: {'no' if not hits else 'more than one'} match under {results / 'data'}"
                        + (f" ({', '.join(p.name for p in hits)})" if hits else ""))
    return hits[0]
