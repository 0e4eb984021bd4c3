"""What every curation step shares: the Step it returns, the Context it runs in, and its error."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.data import generate
from harness.data.sources import assistant_turns


class RecipeError(ValueError):
    pass


@dataclass
class Step:
    kept: list[dict]
    dropped: list[tuple[str, str, float | None]] = field(default_factory=list)  # (example id, reason, score)
    score_stats: dict | None = None


@dataclass
class Context:
    seed: int
    sizes: dict[str, int]  # dataset sizes of other arms, for {random: {like: arm}}
    arms: dict[str, list[dict]] = field(default_factory=dict)  # other arms' rows, for {random: {match: length}}
    results: Path | None = None  # where models, caches of generations and embeddings live
    meter: generate.Meter = field(default_factory=generate.Meter)  # what the current step's models cost


def describe(scores: list[float] | np.ndarray) -> dict | None:
    """A score distribution for the card and the database: mean, quantiles and a 10-bin histogram."""
    x = np.asarray(scores, dtype=float)
    if not len(x):
        return None
    counts, edges = np.histogram(x, bins=10)
    q = np.quantile(x, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"n": len(x), "mean": float(x.mean()), "min": float(x.min()), "max": float(x.max()),
            "quantiles": {k: float(v) for k, v in zip(("p10", "p25", "p50", "p75", "p90"), q)},
            "histogram": {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}}


ON = ("prompt", "response", "conversation", "both")  # what a step reads of a row; `both` is conversation's old name


def parts_of(row: dict, on: str = "conversation") -> tuple[str, ...]:
    """The parts of a row a step compares or embeds: `prompt` (a chat row's history before its last assistant turn,
    as a transcript), `response` (every assistant turn of a chat row) or `conversation` (every turn: a {prompt,
    response} row's two; the default of dedup and decontaminate). Every step reads a row's text through here."""
    if on == "prompt":
        return (row["prompt"],)
    if on == "response":
        return tuple(assistant_turns(row))
    return tuple(m["content"] for m in row["messages"]) if row.get("messages") else (row["prompt"], row["response"])


def text_of(row: dict, on: str = "conversation") -> str:
    """The row's text for hashing and embedding: its parts, one a line."""
    return "\n".join(parts_of(row, on))


def response_length(row: dict, by: str = "chars") -> int:
    """The length of what trains in a row (its response; every assistant turn of a chat row) in characters (a
    tokenizer-free proxy for tokens: ~4 a token in English prose) or words."""
    return sum(len(t) if by == "chars" else len(t.split()) for t in assistant_turns(row))


def need_results(ctx: Context, step: str) -> Path:
    if ctx.results is None:
        raise RecipeError(f"{step}: needs a results folder (for the model and the generation cache)")
    return ctx.results
