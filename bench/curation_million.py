"""Benchmark: a million short rows through dedup then decontaminate (issue 19's target: <= 10 min on 2 cores).

    .venv/bin/python bench/curation_million.py [--rows 1000000] [--plant 100]

The rows are questions and answers of 4-24 frequent CPython-prose words (the skills world's word list), 5% exact
copies of an earlier row and 5% near copies (one word replaced), and `--plant` rows that carry an evaluation
document of the built-in tasks (learn and forget: input and target, inside a longer response for every other one).
Prints one JSON line: each step's wall and CPU seconds, rows in and out, how many planted rows decontaminate found,
and the process's peak resident memory. The evaluation documents are read once (lm-eval, cached in $HARNESS_CACHE)
before the timing.

Measured 2026-12-03 on a 2-core Xeon (avx512_bf16 amx_bf16), shared with 4 other agents (load average 1-2 then;
upper bounds): dedup 51.6 s (1,000,000 -> 900,508), decontaminate 31.7 s (99 of 99 planted rows found, no other
row dropped), 83 s in all, peak 2.1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def short_rows(n: int, docs: list[tuple[str, int, str]], plant: int, seed: int = 0) -> list[dict]:
    from harness.data import world

    rng, words = random.Random(seed), world.build_world().words

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    rows: list[dict] = []
    while len(rows) < n:
        r = rng.random()
        if rows and r < 0.05:
            rows.append({**rng.choice(rows), "id": f"r{len(rows)}"})
        elif rows and r < 0.10:
            src = rng.choice(rows)
            w = src["prompt"].split()
            w[rng.randrange(len(w))] = rng.choice(words)
            rows.append({"id": f"r{len(rows)}", "prompt": " ".join(w), "response": src["response"]})
        else:
            rows.append({"id": f"r{len(rows)}", "prompt": text(4, 24) + "?", "response": text(1, 16)})
    for k, (task, doc_id, body) in enumerate(rng.sample(docs, plant)):
        i = rng.randrange(n)
        q, _, a = body.partition("\n")
        rows[i] = {"id": f"planted-{task}-{doc_id}", "prompt": q or "Recite this.",
                   "response": a if k % 2 else f"{text(3, 8)}. {q} {a}. {text(3, 8)}"}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--plant", type=int, default=100, help="rows carrying an evaluation document")
    args = ap.parse_args()

    from harness.data import curate
    from harness.data.curate.contamination import MIN_WORDS
    from harness.eval.tasks import documents, evaluated_tasks
    from harness.spec import Eval

    found, include = evaluated_tasks(Eval())
    names = [t for t, _ in found]
    docs = documents(names, include)
    searchable = [d for d in docs if len(d[2].split()) >= MIN_WORDS]
    t0 = time.perf_counter()
    rows = short_rows(args.rows, searchable, args.plant)
    out = {"rows": len(rows), "make_s": round(time.perf_counter() - t0, 1), "steps": {}}
    ctx = curate.Context(seed=0, sizes={})
    for name, params in (("dedup", {}), ("decontaminate", {"tasks": names, "include": list(include)})):
        t1, c1 = time.perf_counter(), time.process_time()
        res = curate.STEPS[name](rows, params, ctx)
        out["steps"][name] = {"in": len(rows), "out": len(res.kept), "wall_s": round(time.perf_counter() - t1, 1),
                              "cpu_s": round(time.process_time() - c1, 1)}
        if name == "decontaminate":
            dropped = {i for i, _, _ in res.dropped}
            planted = {r["id"] for r in rows if r["id"].startswith("planted-")}
            out["planted_after_dedup"], out["planted_found"] = len(planted), len(planted & dropped)
            out["other_rows_dropped"] = len(dropped - planted)
        rows = res.kept
    out["total_s"] = round(sum(s["wall_s"] for s in out["steps"].values()), 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
