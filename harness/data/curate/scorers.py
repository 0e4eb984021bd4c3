"""Scorers: (rows, params, ctx) -> (a quality score per row, an optional note per row saying why). Pluggable by
name; SCORER_KEYS lists each one's parameters. Higher is better; filter and best_of_k keep by threshold or rank."""

from __future__ import annotations

import re
from typing import Callable

from harness.data import generate, world
from harness.data.curate.base import Context, RecipeError, need_results
from harness.data.sources import assistant_turns

Scored = tuple[list[float], list[str] | None]


def verifier_scores(rows: list[dict], params: dict, ctx: Context) -> Scored:
    """1 if the skills world's verifier accepts the response, else 0."""
    out = []
    for row in rows:
        if "skill" not in row or "params" not in row:
            raise RecipeError(f"example {row['id']}: the verifier scorer needs skills-world rows (skill, op, params)")
        out.append(float(world.verify(row["skill"], row["op"], tuple(row["params"]), row["response"], _WORLD)))
    return out, None


_WORLD = world.build_world()


def repetition(text: str) -> float:
    """Share of repeated word bigrams: 0 for varied text, near 1 for a loop; 0 below 4 bigrams (too short to say)."""
    words = text.lower().split()
    grams = list(zip(words, words[1:]))
    return 0.0 if len(grams) < 4 else 1 - len(set(grams)) / len(grams)


HEURISTIC_DEFAULTS = {"min_chars": 1, "max_chars": 2000, "max_words": None, "max_repeat": 0.5, "format": None}


def heuristic_scores(rows: list[dict], params: dict, ctx: Context) -> Scored:
    """Rules on the response: min_chars, max_chars, max_words, max_repeat (share of repeated word bigrams) and
    format (a regular expression the stripped response must match in full). Score: the share of rules passed. In a
    chat row every assistant turn is a response: a rule passes when every turn passes it."""
    rules = {k: params.get(k, v) for k, v in HEURISTIC_DEFAULTS.items() if params.get(k, v) is not None}
    if "format" in rules:
        try:
            pattern = re.compile(rules["format"], re.S)
        except re.error as e:
            raise RecipeError(f"filter heuristic: format: invalid regular expression ({e})") from None
    scores, notes = [], []
    for row in rows:
        texts = [t.strip() for t in assistant_turns(row)]
        # the worst turn's measure: the shortest for min_chars, the longest or most repetitive for the others
        measured = {"min_chars": min(map(len, texts)), "max_chars": max(map(len, texts)),
                    "max_words": max(len(t.split()) for t in texts), "max_repeat": max(map(repetition, texts))}
        failed = [f"{k} ({measured[k]:.3g} {'<' if k == 'min_chars' else '>'} {v})" for k, v in rules.items()
                  if k != "format" and (measured[k] < v if k == "min_chars" else measured[k] > v)]
        if "format" in rules and not all(pattern.fullmatch(t) for t in texts):
            failed.append("format (no match)")
        scores.append(1 - len(failed) / len(rules))
        notes.append("failed " + ", ".join(failed) if failed else "")
    return scores, notes


def reward_scores(rows: list[dict], params: dict, ctx: Context) -> Scored:
    """A reward model (any Hugging Face sequence-classification folder): its score of (prompt, response)."""
    if "model" not in params:
        raise RecipeError("scorer reward needs model: <a local sequence-classification model folder>")
    return generate.reward(params["model"], [(r["prompt"], r["response"]) for r in rows],
                           need_results(ctx, "scorer reward"), ctx.meter,
                           label=params.get("label"), batch_size=int(params.get("batch_size", 16))), None


def judge_scores(rows: list[dict], params: dict, ctx: Context) -> Scored:
    """An LLM judge: a causal LM's probability of "yes" to a judging prompt with {prompt} and {response} slots."""
    if "model" not in params:
        raise RecipeError("scorer judge needs model: <a model alias or local causal-LM folder>")
    template = params.get("prompt", generate.DEFAULT_JUDGE_PROMPT)
    try:
        if template.format(prompt="", response="\x00").count("\x00") != 1:
            raise ValueError
    except (KeyError, IndexError, ValueError):
        raise RecipeError("scorer judge: prompt must contain {response} once (and usually {prompt}), and no other "
                          "{...} slots (write {{ and }} for braces)") from None
    return generate.judge_yes(params["model"], [(r["prompt"], r["response"]) for r in rows], template,
                              need_results(ctx, "scorer judge"), ctx.meter,
                              batch_size=int(params.get("batch_size", 16))), None


SCORERS: dict[str, Callable[[list[dict], dict, Context], Scored]] = {
    "verifier": verifier_scores, "heuristic": heuristic_scores, "reward": reward_scores, "judge": judge_scores}
SCORER_KEYS = {"verifier": set(), "heuristic": set(HEURISTIC_DEFAULTS), "reward": {"model", "label", "batch_size"},
               "judge": {"model", "prompt", "batch_size"}}


def score(rows: list[dict], params: dict, ctx: Context) -> tuple[str, list[float], list[str] | None]:
    name = params.get("scorer", "verifier")
    if name not in SCORERS:
        raise RecipeError(f"unknown scorer {name!r}; expected one of {', '.join(SCORERS)}")
    scores, notes = SCORERS[name](rows, params, ctx)
    return name, scores, notes
