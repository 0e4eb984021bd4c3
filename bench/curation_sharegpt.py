"""Benchmark: the user recipe `[dedup, {filter: heuristic}, {diversity: {n: 500}}]` over ShareGPT-shaped chats.

    .venv/bin/python bench/curation_sharegpt.py [--rows 2600] [--n 500] [--embed minilm] [--out /tmp/sharegpt.jsonl]

The scale target (issue 19: <= 3 min on a 2-core CPU): `--rows 100000 --n 5000 --embed static`. Measured
2026-12-03 on a 2-core Xeon (avx512_bf16 amx_bf16) shared with 4 other agents (load average 2-4 then): dedup 58.0 s,
heuristic filter 3.2 s, diversity 26.0 s (static embedding of 37,424 prompts 21.4 s, 1,747 texts/s), 87 s in all,
100,000 -> 54,822 -> 37,424 -> 5,000, peak 3.3 GB (at load 8-12 the same run took 433 s).

There is no ShareGPT offline, so the conversations are made here from CPython's English prose (pydoc_data.topics
and stdlib docstrings) with ShareGPT's shape: `messages` JSONL, 1-4 exchanges, user turns of tens of words,
assistant turns of ~100-600 words (log-normal, median ~250), and ~8% exact duplicate conversations (scraped chat
sets repeat). It writes the JSONL, runs the recipe's steps as `harness data build` does (nothing cached), and
prints one JSON line: the curation time per step (wall, and the process's CPU seconds over all its threads, which a
busy machine inflates far less than wall time), the texts embedded, the embedding rate (texts/s) and the
process's peak resident memory. Run it
with PYTHONPATH pointing at an older checkout to time the code before a change.
`--embed-only` times the embedder alone over the texts diversity embeds (the prompts) and over prompt + response.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_MODULES = ("os", "json", "re", "pathlib", "collections", "itertools", "functools", "typing", "argparse", "logging",
            "subprocess", "threading", "asyncio", "unittest", "dataclasses", "datetime", "decimal", "email", "http",
            "urllib", "xml.dom.minidom", "sqlite3", "csv", "shutil", "tempfile", "random", "statistics", "string")


def prose() -> list[str]:
    """Sentences of CPython's English prose: the pydoc topics and the docstrings of common stdlib modules."""
    import importlib
    import inspect

    from pydoc_data.topics import topics

    texts = list(topics.values())
    for name in _MODULES:
        mod = importlib.import_module(name)
        texts += [inspect.getdoc(o) or "" for o in [mod, *vars(mod).values()] if callable(o) or o is mod]
    words = " ".join(" ".join(t.split()) for t in texts if t)
    return [s for s in re.split(r"(?<=[.!?])\s+", words) if 3 <= len(s.split()) <= 80]


def conversations(rows: int, seed: int = 0) -> list[dict]:
    rng, sents = random.Random(seed), prose()

    def span(words: int) -> str:  # consecutive sentences from a random place, about `words` long
        i, out = rng.randrange(len(sents)), []
        while sum(len(s.split()) for s in out) < words:
            out.append(sents[i % len(sents)])
            i += 1
        return " ".join(out)

    def user() -> str:
        ask = rng.choice(("Can you explain this: ", "What does this mean? ", "Summarise: ", "Help me understand ",
                          "Why is it that ", ""))
        return ask + " ".join(span(rng.randint(10, 60)).split()[:rng.randint(10, 60)])

    def assistant() -> str:
        return span(int(min(600, max(100, rng.lognormvariate(5.5, 0.5)))))  # median e^5.5 ~ 245 words

    out: list[dict] = []
    while len(out) < rows:
        if out and rng.random() < 0.08:
            out.append(rng.choice(out))
            continue
        msgs = []
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
            msgs += [{"role": "user", "content": user()}, {"role": "assistant", "content": assistant()}]
        out.append({"messages": msgs})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2600)
    ap.add_argument("--n", type=int, default=500, help="examples the diversity step selects")
    ap.add_argument("--out", type=Path, help="where to write the JSONL (default: a temporary folder)")
    ap.add_argument("--embed", default="minilm", choices=["minilm", "static", "tfidf"], help="diversity's embedder")
    ap.add_argument("--embed-only", action="store_true", help="time the embedder alone")
    args = ap.parse_args()

    from harness.data import sources
    from harness.data import curate, embed, generate

    tmp = Path(tempfile.mkdtemp(prefix="sharegpt-"))
    path = args.out or tmp / "sharegpt.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in conversations(args.rows)))
    rows = sources.read_jsonl(path)
    words = sorted(len((r["prompt"] + " " + r["response"]).split()) for r in rows)
    shape = {"rows": len(rows), "file": str(path), "words_median": words[len(words) // 2],
             "words_p90": words[int(len(words) * 0.9)]}
    if args.embed_only:
        for label, texts in (("prompt", [r["prompt"] for r in rows]),
                             ("both", [r["prompt"] + "\n" + r["response"] for r in rows])):
            texts = list(dict.fromkeys(texts))
            embed.embed(texts[:8], args.embed, None, generate.Meter())  # load the model once, outside the timing
            t0, c0 = time.perf_counter(), time.process_time()
            embed.embed(texts, args.embed, None, generate.Meter())
            s, c = time.perf_counter() - t0, time.process_time() - c0
            shape[f"{label}_texts"], shape[f"{label}_texts_per_s"] = len(texts), round(len(texts) / s, 1)
            shape[f"{label}_texts_per_cpu_s"] = round(len(texts) / c, 1)
        print(json.dumps({**shape, "embed": args.embed, "peak_rss_mb": _peak_mb()}))
        return
    recipe = {"source": str(path), "steps": [["dedup", {}], ["filter", {"scorer": "heuristic"}],
                                              ["diversity", {"n": args.n, "embed": args.embed}]]}
    ctx = curate.Context(seed=0, sizes={}, results=None)  # nothing cached: every embedding is computed
    t, n = {}, [len(rows)]
    t0, c0 = time.perf_counter(), time.process_time()
    for name, params in recipe["steps"]:
        t1, c1 = time.perf_counter(), time.process_time()
        rows = curate.STEPS[name](rows, params, ctx).kept
        t[f"{name}_s"], t[f"{name}_cpu_s"] = round(time.perf_counter() - t1, 1), round(time.process_time() - c1, 1)
        n.append(len(rows))
    t["total_s"], t["total_cpu_s"] = round(time.perf_counter() - t0, 1), round(time.process_time() - c0, 1)
    print(json.dumps({**shape, "embed": args.embed, "counts": n, **t, "embed_s": round(ctx.meter.compute_seconds, 1),
                      "embedded": n[2], "embed_texts_per_s": round(n[2] / max(ctx.meter.compute_seconds, 1e-9), 1),
                      "peak_rss_mb": _peak_mb()}))


def _peak_mb() -> int:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


if __name__ == "__main__":
    main()
