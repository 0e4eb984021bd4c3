"""The contamination audit as `harness matrix run` makes it (runner.audit_contamination), without training.

    .venv/bin/python bench/contamination_audit.py OUT_FOLDER

Builds the data sets (nothing trains) of the demo matrix, and of a matrix whose arm `mine` is a user JSONL (500
skills-pool rows) with three planted evaluation documents (skills_arith 5 verbatim, world_mc 7 inside an answer,
20 words of prose_bpb 2) and whose arm `mine_clean` is the same file through `decontaminate`; prints the warnings
`matrix run` shows and each matrix's contamination table.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def planted_matrix(out: Path) -> Path:
    from harness.data import world
    from harness.eval.tasks import documents

    texts = {(t, i): x for t, i, x in documents(["skills_arith", "world_mc", "prose_bpb"])}
    rows = [{"id": r["id"], "prompt": r["prompt"], "response": r["response"]}
            for r in world.generate_pool(500, seed=7)]
    q, a = texts[("skills_arith", 5)].split("\n")
    mc = texts[("world_mc", 7)].replace("\n", " ")
    prose = " ".join(texts[("prose_bpb", 2)].split()[40:60])
    rows[100:100] = [{"id": "planted-arith-5", "prompt": q, "response": a}]
    rows[200:200] = [{"id": "planted-mc-7", "prompt": "Tell me a fact.", "response": f"Sure. {mc}. Anything else?"}]
    rows[300:300] = [{"id": "planted-prose-2", "prompt": "Quote the docs.", "response": f"They say: {prose}"}]
    (out / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = out / "planted.yaml"
    path.write_text(f"name: planted\nmodels: [tiny]\narms:\n  mine: {{source: {out / 'mine.jsonl'}}}\n"
                    f"  mine_clean: {{source: {out / 'mine.jsonl'}, steps: [decontaminate]}}\n")
    return path


def main() -> None:
    from harness import store
    from harness.data.build import build
    from harness.run.plan import plan
    from harness.run.runner import audit_contamination
    from harness.spec import load_matrix

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    results, db = out / "results", out / "results" / "harness.duckdb"
    for m in (load_matrix("demo"), load_matrix(planted_matrix(out))):
        p = plan(m)
        for line in audit_contamination(p, build(p.recipes, results, log=print), results, db):
            print(f"contamination: {line}")
        cols, rows = store.query(db, f"SELECT arm, task, task_group, overlapping_rows, train_rows, overlapping_docs, "
                                     f"eval_docs, examples FROM contamination WHERE matrix = '{m.name}' "
                                     f"ORDER BY arm, task")
        print(" | ".join(cols))
        for r in rows:
            print(" | ".join(map(str, r)))


if __name__ == "__main__":
    main()
