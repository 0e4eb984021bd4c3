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


def example_turns(row: dict, loss_on: str = "all") -> list[tuple[str, str, bool]]:
    """One row as (role, text, trained) turns: what a cell with train.loss_on trains on (a {prompt, response} row
    is one user and one assistant turn)."""
    messages = row.get("messages") or [{"role": "user", "content": row["prompt"]},
                                       {"role": "assistant", "content": row["response"]}]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [(m["role"], m["content"], m["role"] == "assistant" and (loss_on == "all" or i == last))
            for i, m in enumerate(messages)]


def showcase(rows: list[dict]) -> dict:
    """The row a card shows: among the first 200, the shortest with two assistant turns or more (a conversation,
    when the data set has any), else the first."""
    chats = [r for r in rows[:200] if sum(role == "assistant" for role, _, _ in example_turns(r)) > 1]
    return min(chats, key=lambda r: sum(len(t) for _, t, _ in example_turns(r))) if chats else rows[0]


def clip(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[:n] + f"… ({len(text) - n:,} more characters)"


def length_figures(rows: list[dict], tokenizer, max_length: int, too_long: str) -> dict:
    """What train.max_length and train.too_long cost a data set with this tokenizer and chat template: rows over
    the limit, rows dropped, trained tokens lost; and trained tokens per row with loss on every assistant turn and on
    the last only (after the policy)."""
    from harness.train.sft import encode_rows, fit_length

    ids = [r["id"] for r in rows]
    every, decisions = fit_length(ids, encode_rows(tokenizer, rows, max_length, "all"), too_long)
    last, _ = fit_length(ids, encode_rows(tokenizer, rows, max_length, "last"), too_long)
    trained = sum(d["trained_tokens"] for d in decisions) + sum(e.n_response for e in every if not e.cut)
    return {"rows": len(rows), "rows_over_length": len(decisions),
            "rows_dropped": sum(d["action"] == "dropped" for d in decisions),
            "trained_tokens": trained, "trained_tokens_lost": sum(d["trained_tokens_lost"] for d in decisions),
            "trained_per_row_all": sum(e.n_response for e in every) / max(1, len(every)),
            "trained_per_row_last": sum(e.n_response for e in last) / max(1, len(last))}
