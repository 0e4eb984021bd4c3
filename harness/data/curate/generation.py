"""Steps that write new responses with a model: best-of-K rejection sampling and distillation. Models come from
harness.models (aliases or folders)."""

from __future__ import annotations

import numpy as np

from harness.data import generate
from harness.data.curate.base import Context, RecipeError, Step, describe, need_results
from harness.data.curate.scorers import score
from harness.data.sources import history, with_response

GEN_KEYS = {"max_new_tokens", "temperature", "top_p", "system", "shots", "batch_size"}


def _gen_params(params: dict, ctx: Context, k: int = 1, temperature: float = 0.0) -> generate.GenParams:
    shots = params.get("shots", [])
    if not isinstance(shots, list) or not all(isinstance(s, list) and len(s) == 2 and all(isinstance(x, str) for x in s)
                                              for s in shots):
        raise RecipeError(f"shots: expected a list of [prompt, response] string pairs, got {shots!r}")
    return generate.GenParams(max_new_tokens=int(params.get("max_new_tokens", 32)),
                              temperature=float(params.get("temperature", temperature)),
                              top_p=float(params.get("top_p", 1.0)), k=k, system=params.get("system"),
                              shots=tuple(map(tuple, shots)), seed=ctx.seed,
                              batch_size=int(params.get("batch_size", 16)))


def best_of_k(rows: list[dict], params: dict, ctx: Context) -> Step:
    """Rejection sampling: the `policy` model samples k responses per prompt (temperature 1.0 and top_p 1.0 by
    default), the scorer (as in filter; default verifier) scores each, and the best replaces the response. With a
    `threshold`, prompts whose best candidate scores below it are dropped (the acceptance rate is recorded)."""
    if "policy" not in params:
        raise RecipeError("best_of_k needs policy: <a model alias or local folder>")
    k = int(params.get("k", 4))
    if k < 1:
        raise RecipeError(f"best_of_k: k must be >= 1, got {k}")
    samples = generate.generate(params["policy"], [history(r) for r in rows],
                                _gen_params(params, ctx, k=k, temperature=1.0), need_results(ctx, "best_of_k"),
                                ctx.meter)
    candidates = [with_response(r, c) for r, cs in zip(rows, samples) for c in cs]
    name, scores, _ = score(candidates, params, ctx)
    threshold = float(params["threshold"]) if "threshold" in params else None
    kept, dropped, best_scores = [], [], []
    for i, r in enumerate(rows):
        s = scores[i * k:(i + 1) * k]
        j = int(np.argmax(s))  # the first of equally good candidates
        best_scores.append(s[j])
        if threshold is not None and s[j] < threshold:
            dropped.append((r["id"], f"best of {k} {name} score {s[j]:.3g} below {threshold:g}: "
                                     f"{samples[i][j][:60]!r}", s[j]))
        else:
            kept.append(with_response(r, samples[i][j], original_response=r["response"], best_of_k_score=s[j]))
    stats = {"scorer": name, "k": k, "acceptance_rate": len(kept) / len(rows) if rows else None,
             "best": describe(best_scores), "candidates": describe(scores),
             "distinct_per_prompt": float(np.mean([len(set(c)) for c in samples])) if samples else None}
    return Step(kept, dropped, stats)


def distill(rows: list[dict], params: dict, ctx: Context) -> Step:
    """A `teacher` model writes the response for every prompt (greedy by default; temperature > 0 samples). Rows the
    teacher answers with nothing are dropped. Follow with {filter: ...} to keep only answers that pass a check."""
    if "teacher" not in params:
        raise RecipeError("distill needs teacher: <a model alias or local folder>")
    outputs = generate.generate(params["teacher"], [history(r) for r in rows], _gen_params(params, ctx),
                                need_results(ctx, "distill"), ctx.meter)
    kept, dropped = [], []
    for r, (text,) in zip(rows, outputs):
        if text:
            kept.append(with_response(r, text, original_response=r["response"]))
        else:
            dropped.append((r["id"], "the teacher wrote an empty response", None))
    stats = {"teacher": params["teacher"], "changed": float(np.mean([x["response"] != x["original_response"]
                                                                      for x in kept])) if kept else None,
             "response_chars": describe([len(x["response"]) for x in kept])}
    return Step(kept, dropped, stats)
