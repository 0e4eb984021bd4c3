"""Benchmark: dedup + embedding diversity over a 100k-example skills-world pool (target: <= 5 min on a 2-core CPU).

    flock /tmp/harness-cpu.lock .venv/bin/python bench/curation_scale.py [--size 100000] [--n 5000]

Times each stage separately (pool generation, dedup, MiniLM embedding + k-center selection) with nothing cached, and
prints one JSON line. `--dedup embedding` times the embedding near-duplicate search instead of MinHash; `--dedup none`
skips dedup, so that diversity embeds and searches the whole pool (the worst case: the skills pool's 100k rows hold
far fewer distinct examples). `--pool words` replaces the skills pool with 100k distinct random-word texts of 8-16
words (frequent CPython-prose words): nothing to deduplicate, every text embedded, the embedding-bound worst case.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def word_pool(size: int) -> list[dict]:
    import random

    from harness.data import world

    rng, words = random.Random(0), world.build_world().words

    def text() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(8, 16)))

    return [{"id": f"w{i}", "prompt": text(), "response": text()} for i in range(size)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--pool", default="skills", choices=["skills", "words"])
    ap.add_argument("--n", type=int, default=5000, help="examples the diversity step selects")
    ap.add_argument("--dedup", default="minhash", choices=["minhash", "embedding", "none"])
    ap.add_argument("--embed", default="minilm", choices=["minilm", "tfidf"])
    ap.add_argument("--method", default="kcenter", choices=["kcenter", "clusters"])
    args = ap.parse_args()

    import torch

    from harness.data import curate, world

    t = {}
    t0 = time.perf_counter()
    rows = world.generate_pool(args.size, seed=0) if args.pool == "skills" else word_pool(args.size)
    t["pool_s"] = time.perf_counter() - t0
    ctx = curate.Context(seed=0, sizes={}, results=None)  # no cache: every embedding is computed
    t0 = time.perf_counter()
    kept = rows if args.dedup == "none" else curate.dedup(rows, {"method": args.dedup}, ctx).kept
    t["dedup_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    chosen = curate.diversity(kept, {"n": args.n, "embed": args.embed, "method": args.method}, ctx)
    t["diversity_s"] = time.perf_counter() - t0
    t["embed_s"] = ctx.meter.compute_seconds  # embedding time (model load excluded), part of dedup_s / diversity_s
    t["total_s"] = t["pool_s"] + t["dedup_s"] + t["diversity_s"]
    print(json.dumps({**vars(args), "threads": torch.get_num_threads(), "after_dedup": len(kept),
                      "distinct_prompts": len({r["prompt"] for r in kept}),
                      "selected": len(chosen.kept), "covering_radius": chosen.score_stats.get("covering_radius"),
                      **{k: round(v, 1) for k, v in t.items()}}))


if __name__ == "__main__":
    main()
