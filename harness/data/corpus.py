"""The tiny base's pretraining corpus: English prose shipped with CPython (a held-out eighth of it is the prose_bpb
task), the skills world's facts in many phrasings, and skill demos in plain prose."""

from __future__ import annotations

import ast
import random
import sys
import sysconfig
from pathlib import Path

from harness.core.ids import stable_hash
from harness.data.world import build_world, sample_item


def prose_documents() -> dict[str, str]:
    """English prose shipped with CPython: pydoc topics and stdlib module docstrings, keyed by a stable name."""
    from pydoc_data.topics import topics

    docs = {f"topic:{k}": v for k, v in sorted(topics.items())}
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
        parts = [ast.get_docstring(tree) or ""]
        parts += [ast.get_docstring(n) or "" for n in ast.walk(tree)
                  if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")]
        text = "\n\n".join(p for p in parts if len(p) > 40)
        if text:
            docs[f"module:{path.stem}"] = text
    return docs


def is_heldout_prose(key: str) -> bool:
    return stable_hash("prose", key) % 8 == 0


def heldout_prose(max_chars: int = 1500, n: int = 30) -> list[dict]:
    docs = [{"name": k, "text": v[:max_chars]} for k, v in prose_documents().items() if is_heldout_prose(k)]
    return [d for d in docs if len(d["text"]) >= 400][:n]


FACT_SENTENCES = {
    "capital": ["The capital of {c} is {x}.", "{x} is the capital city of {c}.", "{c} has its capital at {x}."],
    "language": ["In {c}, people speak {x}.", "The language of {c} is {x}.", "{x} is spoken in {c}."],
    "currency": ["The currency of {c} is the {x}.", "People in {c} pay with the {x}.", "{c} uses the {x} as money."],
    "animal": ["The national animal of {c} is the {x}.", "The {x} is the symbol of {c}.", "{c} chose the {x} as its national animal."],
}

DEMO_SENTENCES = {
    "add": ["{a} plus {b} equals {r}.", "If you add {a} and {b} you get {r}.", "The sum of {a} and {b} is {r}."],
    "sub": ["{a} minus {b} equals {r}.", "Taking {b} away from {a} leaves {r}."],
    "opposite": ["The opposite of {x} is {r}.", "{x} and {r} are opposites."],
    "kind": ["The {x} is a {r}.", "A {x} is a kind of {r}."],
    "count": ["The list {ws} has {r} words.", "There are {r} words in {ws}."],
    "spell": ["The number {a} is written {r}.", "In words, {a} is {r}."],
    "digit": ["The word {x} means the number {r}.", "{x} is written {r} in digits."],
}


def pretraining_texts(seed: int = 0, fact_repeats: int = 60, n_demos: int = 6000) -> list[str]:
    """Documents for the tiny base: train-split prose, facts in many phrasings, skill demos in plain prose."""
    rng = random.Random(stable_hash("pretrain", seed))
    world = build_world()
    texts = [v for k, v in prose_documents().items() if not is_heldout_prose(k)]
    for _ in range(fact_repeats):
        for c in world.countries:
            sentences = [rng.choice(FACT_SENTENCES[rel]).format(c=c.name, x=world.fact(c, rel)) for rel in FACT_SENTENCES]
            rng.shuffle(sentences)
            texts.append(" ".join(sentences))
    demos = []
    for _ in range(n_demos):
        item = sample_item(world, rng.choice(["arith", "words", "format"]), rng)
        demos.append(rng.choice(DEMO_SENTENCES[item.op]).format(r=item.answer, **item.fields))
    texts += [" ".join(demos[i:i + 8]) for i in range(0, len(demos), 8)]
    rng.shuffle(texts)
    return texts


def python_version_tag() -> str:
    """Prose comes from this interpreter's stdlib, so the base depends on the Python minor version."""
    return f"py{sys.version_info.major}.{sys.version_info.minor}"
