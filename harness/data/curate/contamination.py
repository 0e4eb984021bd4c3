"""Contamination: training rows that contain an evaluation document. The decontaminate step drops them; every
matrix run audits each arm with the same search (harness/run/runner.py).

A document is a task's input as lm-eval renders it followed by its target (harness/eval/tasks.py `documents`).
`ngram` (the default): a row overlaps a document when they share a word n-gram of their normalised text (n = 13,
as in GPT-3's and lm-eval's decontamination; arithmetic symbols count as words); a document shorter than n words overlaps a row that contains all of
it, and one under MIN_WORDS words is too short to tell (a bare number or word) and is not searched. `minhash`:
the Jaccard similarity of their character 5-grams >= threshold (default 0.6), the dedup step's measure: it finds
reformatted copies of a document, but not a document inside a much longer row. `embedding`: the cosine similarity
of their embeddings (`embed`: static, the default here, or minilm) >= threshold (default 0.9): paraphrases too.
"""

from __future__ import annotations

import numpy as np

from harness.data.curate import ngrams
from harness.data.curate.base import Context, RecipeError, Step, text_of
from harness.data.curate.ngrams import normalise
from harness.data.embed import METHODS as EMBEDDINGS
from harness.data.embed import embed as embed_texts
from harness.data.generate import Meter

METHODS = ("ngram", "minhash", "embedding")
THRESHOLD = {"minhash": 0.6, "embedding": 0.9}
MIN_WORDS = 4  # "What is 9 + 5? 14" is 5 words: the skills tasks' shortest documents are searched
_CHUNK = 50_000  # training texts hashed at once: 50k rows of ~20 words are 1M words, 13 uint64 arrays of them


class Index:
    """The documents of the evaluation tasks, ready to be searched: docs[i] = (task, doc id, text)."""

    def __init__(self, docs: list[tuple[str, int, str]], method: str = "ngram", n: int = 13,
                 threshold: float | None = None, embed: str = "static"):
        if method not in METHODS:
            raise RecipeError(f"decontaminate: unknown method {method!r}; expected {', '.join(METHODS)}")
        if embed not in EMBEDDINGS:
            raise RecipeError(f"decontaminate: unknown embed {embed!r}; expected {', '.join(EMBEDDINGS)}")
        self.docs, self.method, self.n, self.embed = docs, method, n, embed
        self.threshold = THRESHOLD.get(method, 0.0) if threshold is None else threshold
        if method == "embedding":
            self.vectors = self._embed([t for _, _, t in docs])
            return
        norm = [(ngrams.words if method == "ngram" else normalise)(t) for _, _, t in docs]
        self.owner: dict[int, list[int]] = {}  # n-gram hash or band key -> documents
        if method == "ngram":
            self.words = ngrams.WordGrams()
            size = [min(n, t.count(" ") + 1 if t else 0) for t in norm]
            self.lengths = {k for k in size if k >= MIN_WORDS}
            for k in self.lengths:
                members = [i for i, s in enumerate(size) if s == k]
                hashes, rows = self.words.grams([norm[i] for i in members], {k})
                for h, r in zip(hashes.tolist(), rows.tolist()):
                    self._own(h, members[r])
            self.keys = np.array(sorted(self.owner), dtype=np.uint64)
        else:
            codes, offsets = ngrams.shingles(norm)
            self.sets = [ngrams.distinct(codes[offsets[i]:offsets[i + 1]]) for i in range(len(norm))]
            for i, row in enumerate(ngrams.band_keys(ngrams.signatures(codes, offsets)).tolist()):
                for key in row:
                    self._own(key, i)

    def _own(self, key: int, doc: int) -> None:
        docs = self.owner.setdefault(key, [])
        if not docs or docs[-1] != doc:
            docs.append(doc)

    def search(self, texts: list[str]) -> list[list[int]]:
        """For each text, the documents it overlaps (indices into docs, in order)."""
        out: list[list[int]] = [[] for _ in texts]
        for s in range(0, len(texts), _CHUNK):
            chunk = texts[s:s + _CHUNK]
            if self.method == "embedding":
                hits = self._embedding_hits(chunk)
            elif self.method == "ngram":
                hits = self._ngram_hits([ngrams.words(t) for t in chunk])
            else:
                hits = self._minhash_hits([normalise(t) for t in chunk])
            for r, docs in hits.items():
                out[s + r] = sorted(docs)
        return out

    def _ngram_hits(self, norm: list[str]) -> dict[int, set[int]]:
        hashes, rows = self.words.grams(norm, self.lengths)
        found = np.isin(hashes, self.keys)
        hits: dict[int, set[int]] = {}
        for h, r in zip(hashes[found].tolist(), rows[found].tolist()):
            hits.setdefault(r, set()).update(self.owner[h])
        return hits

    def _minhash_hits(self, norm: list[str]) -> dict[int, set[int]]:
        codes, offsets = ngrams.shingles(norm)
        hits: dict[int, set[int]] = {}
        for r, row in enumerate(ngrams.band_keys(ngrams.signatures(codes, offsets)).tolist()):
            candidates = {d for key in row for d in self.owner.get(key, ())}
            if candidates:
                mine = ngrams.distinct(codes[offsets[r]:offsets[r + 1]])
                docs = {d for d in candidates if ngrams.jaccard(mine, self.sets[d]) >= self.threshold}
                if docs:
                    hits[r] = docs
        return hits

    def _embed(self, texts: list[str]) -> np.ndarray:
        return embed_texts(texts, self.embed, None, Meter())

    def _embedding_hits(self, texts: list[str]) -> dict[int, set[int]]:
        sims = self._embed(texts) @ self.vectors.T
        return {int(r): set(np.flatnonzero(sims[r] >= self.threshold).tolist())
                for r in np.flatnonzero(sims.max(axis=1, initial=-1) >= self.threshold)}

    def describe(self) -> str:
        return {"ngram": f"word {self.n}-grams", "minhash": f"5-gram Jaccard >= {self.threshold:g}",
                "embedding": f"{self.embed} cosine >= {self.threshold:g}"}[self.method]


def index_for(params: dict) -> Index:
    """The Index of a decontaminate step's tasks (resolved by the recipe: `tasks`, `include`)."""
    from harness.eval.tasks import documents  # evaluation documents, read through lm-eval (cached)

    threshold = params.get("threshold")
    return Index(documents(params["tasks"], tuple(params.get("include", ()))), params.get("method", "ngram"),
                 int(params.get("n", 13)), None if threshold is None else float(threshold),
                 params.get("embed", "static"))


def decontaminate(rows: list[dict], params: dict, ctx: Context) -> Step:
    """Drop the rows that overlap any evaluation document of the tasks (`against: eval`, the default: the
    matrix's learn, forget and included tasks; or a list of tasks); each drop names the task and document."""
    index = index_for(params)
    found = index.search([text_of(r) for r in rows])
    kept, dropped, per_task = [], [], {}
    for r, docs in zip(rows, found):
        if not docs:
            kept.append(r)
            continue
        task, doc_id, _ = index.docs[docs[0]]
        more = f" and {len(docs) - 1} more document(s)" if len(docs) > 1 else ""
        dropped.append((r["id"], f"overlaps {task} document {doc_id} ({index.describe()}){more}", float(len(docs))))
        for t in dict.fromkeys(index.docs[d][0] for d in docs):
            per_task[t] = per_task.get(t, 0) + 1
    return Step(kept, dropped, {"method": index.method, "n": index.n, "documents": len(index.docs),
                                "dropped_by_task": per_task})


def audit(rows: list[dict], index: Index, groups: dict[str, str]) -> list[dict]:
    """Per task: how many of the training rows overlap its documents, how many of its documents they cover, and
    up to five (example id, doc id) pairs to look at."""
    found = index.search([text_of(r) for r in rows])
    out = {task: {"task": task, "task_group": group, "eval_docs": 0, "overlapping_rows": 0, "docs": set(),
                  "examples": []} for task, group in groups.items()}
    for task, _, _ in index.docs:
        if task in out:
            out[task]["eval_docs"] += 1
    for r, docs in zip(rows, found):
        for task in dict.fromkeys(index.docs[d][0] for d in docs):
            a = out[task]
            a["overlapping_rows"] += 1
            hit = [index.docs[d][1] for d in docs if index.docs[d][0] == task]
            a["docs"].update(hit)
            if len(a["examples"]) < 5:
                a["examples"].append([r["id"], hit[0]])
    return [{**{k: v for k, v in a.items() if k != "docs"}, "overlapping_docs": len(a["docs"]),
             "train_rows": len(rows), "method": index.method, "n": index.n} for a in out.values()]
