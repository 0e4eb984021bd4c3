"""A built data set's card, summarised for `harness data show` and `harness matrix plan`."""

from __future__ import annotations

import json
from pathlib import Path


def stats_summary(stats: dict | None) -> str:
    """One line for a step's score_stats."""
    if not stats:
        return ""
    if "acceptance_rate" in stats:
        best, cands = stats["best"] or {}, stats["candidates"] or {}
        return (f"{stats['scorer']}: accepted {stats['acceptance_rate']:.0%} of prompts; best-of-{stats['k']} mean "
                f"{best.get('mean', float('nan')):.3g}, candidate mean {cands.get('mean', float('nan')):.3g}")
    if "scorer" in stats:
        q = stats.get("quantiles", {})
        return (f"{stats['scorer']}: mean {stats['mean']:.3g}, p10 {q.get('p10', 0):.3g}, p50 {q.get('p50', 0):.3g}, "
                f"p90 {q.get('p90', 0):.3g}")
    if "covering_radius" in stats:
        return f"{stats['method']} on {stats['embed']}: covering radius {stats['covering_radius']:.3f}"
    if "near_duplicates" in stats:
        return f"{stats['near_duplicates']} near duplicates ({stats['method']}, threshold {stats['threshold']:g})"
    if "changed" in stats:
        return f"teacher {stats['teacher']}: changed {stats['changed']:.0%} of responses"
    return stats.get("note", json.dumps(stats))


def short_params(params: dict) -> str:
    """A step's parameters as the user wrote them (without the ids and fingerprints resolution adds)."""
    return ", ".join(f"{k}={v}" for k, v in params.items() if not k.endswith(("_fingerprint", "_dataset")))


def card_summary(folder: Path, n_examples: int = 3) -> dict:
    """What `harness data show` prints: header lines, a steps table, kept and dropped examples."""
    import pyarrow.parquet as pq

    card = json.loads((folder / "card.json").read_text())
    src = card["recipe"]["source"]
    where = src.get("path") or src.get("id") or f"{src.get('size', 0):,} rows, seed {src.get('seed')}"
    header = [f"data set {card['dataset_id']}: {card['n_examples']:,} examples from {src['kind']} ({where})",
              f"source rows {card.get('n_source', '?')}, malformed skipped {card.get('n_bad', 0)}; parent "
              f"{card['parent'] or '-'}; built in {card['build_seconds']:.1f}s",
              f"curation cost: {card.get('generated_tokens', 0):,} generated tokens, "
              f"{card.get('device_hours', 0) * 3600:.1f} device-seconds of model compute",
              "by skill: " + ", ".join(f"{k} {v}" for k, v in sorted(card["n_by_skill"].items()))]
    steps = [(i, s["step"], short_params(s["params"]), s["n_in"], s["n_out"], s["n_in"] - s["n_out"],
              stats_summary(s.get("score_stats")), round(s.get("seconds", 0), 1)) for i, s in enumerate(card["steps"])]
    with (folder / "data.jsonl").open() as f:
        kept = [json.loads(next(f)) for _ in range(min(n_examples, card["n_examples"]))]
    dropped = pq.read_table(folder / "decisions.parquet").to_pylist()
    by_step: dict[int, list[dict]] = {}
    for d in dropped:
        if len(by_step.setdefault(d["step_index"], [])) < n_examples:
            by_step[d["step_index"]].append(d)
    return {"header": header, "steps": steps, "kept": kept,
            "dropped": [d for i in sorted(by_step) for d in by_step[i]]}
