"""Benchmark: the static embedder (`embed: static`, model2vec distilled from MiniLM) against MiniLM itself.

    .venv/bin/python bench/static_embedder.py [--rows 3000] [--n 300] [--speed-rows 20000] [--jsonl FILE]

On the prompts of ShareGPT-shaped conversations (bench/curation_sharegpt.py's generator; or the `prompt`s of a
JSONL such as a real chat set), prints one JSON line with
- recall@10: for each text, the share of its 10 nearest neighbours under MiniLM that the static embedder also
  puts among its 10 nearest (cosine), averaged;
- covering radius in MiniLM space of n rows chosen by k-center greedy over each embedder's vectors (and of n
  random rows): how far, in MiniLM's cosine distance, the worst-covered prompt lies from the chosen set;
- speed: static texts/s on ShareGPT-length texts (prompt + response), MiniLM texts/s on the prompts, both with
  the model already loaded; and the peak resident memory of the process.
The static model is distilled on first use into $HARNESS_CACHE (once per machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3000, help="prompts compared (MiniLM embeds them all)")
    ap.add_argument("--n", type=int, default=300, help="rows k-center selects")
    ap.add_argument("--speed-rows", type=int, default=20000, help="ShareGPT-length texts the static embedder times")
    ap.add_argument("--jsonl", type=Path, help="prompts from this JSONL (prompt/response or messages rows)")
    args = ap.parse_args()

    import numpy as np

    from curation_sharegpt import conversations
    from harness.data import embed, generate, sources
    from harness.data.curate import k_center

    if args.jsonl:
        rows = sources.read_jsonl(args.jsonl, skip_bad=True)  # a real export has malformed rows: skipped
    else:
        path = Path(os.environ.get("TMPDIR", "/tmp")) / "static-embedder-bench.jsonl"
        path.write_text("".join(json.dumps(c) + "\n" for c in conversations(max(args.rows, args.speed_rows))))
        rows = sources.read_jsonl(path)
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))[:args.rows]
    out = {"prompts": len(prompts), "source": str(args.jsonl or "generated ShareGPT-shaped")}

    def vectors(method: str, texts: list[str]) -> tuple[np.ndarray, float]:
        embed.embed(texts[:8], method, None, generate.Meter())  # load (or distil) the model outside the timing
        t0 = time.perf_counter()
        x = embed.embed(texts, method, None, generate.Meter())
        return x, time.perf_counter() - t0

    mini, t_mini = vectors("minilm", prompts)
    stat, _ = vectors("static", prompts)
    k = 10
    sim_m, sim_s = mini @ mini.T, stat @ stat.T
    np.fill_diagonal(sim_m, -2)
    np.fill_diagonal(sim_s, -2)
    nn_m = np.argpartition(-sim_m, k, axis=1)[:, :k]
    nn_s = np.argpartition(-sim_s, k, axis=1)[:, :k]
    out["recall_at_10"] = round(float(np.mean([len(set(a) & set(b)) / k for a, b in zip(nn_m, nn_s)])), 3)

    def radius(chosen) -> float:  # in MiniLM space
        return float((1 - (mini @ mini[list(chosen)].T).max(axis=1)).max())

    rng = np.random.default_rng(0)
    out["covering_radius_minilm_space"] = {
        "kcenter_minilm": round(radius(k_center(mini, args.n, 0)[0]), 3),
        "kcenter_static": round(radius(k_center(stat, args.n, 0)[0]), 3),
        "random": round(float(np.mean([radius(rng.choice(len(mini), args.n, replace=False)) for _ in range(5)])), 3)}
    long_texts = [r["prompt"] + "\n" + r["response"] for r in rows][:args.speed_rows]
    _, t_static = vectors("static", long_texts)
    words = sorted(len(t.split()) for t in long_texts)
    out["static_texts_per_s"] = round(len(long_texts) / t_static, 1)
    out["static_texts"], out["static_words_median"] = len(long_texts), words[len(words) // 2]
    out["minilm_prompts_per_s"] = round(len(prompts) / t_mini, 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
