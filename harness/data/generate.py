"""Model calls for curation: batched generation (distill, best-of-K), LLM-judge and reward-model scores, all cached.

Every call is cached by content in an append-only JSONL journal under RESULTS/cache/<kind>/: one file per model
fingerprint and call parameters, one line per prompt, appended after each batch. A rerun (or a killed build resumed)
computes only what the journal lacks, and never loads a model when nothing is missing. A truncated last line (a kill
mid-write) is ignored and computed again. Each line keeps the seconds its batch took, so a data set built from cached
outputs still reports what they cost.

Models load only through harness.models (resolve + load), so every alias it knows works as a teacher or policy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import models
from harness.core.ids import stable_hash
from harness.core.progress import progress


@dataclass
class Meter:
    """What a data set's curation cost: tokens models wrote, and the seconds models computed (cache hits included,
    at the cost recorded when they were computed)."""
    generated_tokens: int = 0
    compute_seconds: float = 0.0
    computed: int = 0  # prompts computed in this build
    cached: int = 0  # prompts answered from the cache

    def add(self, other: "Meter") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


@dataclass(frozen=True)
class GenParams:
    max_new_tokens: int = 32  # skills-world answers are a few tokens; teachers that explain need more
    temperature: float = 0.0  # 0: greedy decoding
    top_p: float = 1.0
    k: int = 1  # samples per prompt (best-of-K)
    system: str | None = None  # a system turn before each prompt, e.g. "Answer with the answer only."
    shots: tuple[tuple[str, str], ...] = ()  # example (prompt, response) exchanges before each prompt: few-shot turns
    # teach a small instruct model the expected format far better than a system instruction does
    seed: int = 0
    batch_size: int = 16  # prompts per generate() call; not in the cache key (padding changes outputs in the last bits
    # at most, which a cache may ignore)


class Journal:
    """prompt key -> cached record, backed by one append-only JSONL file."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a kill mid-append: that prompt is computed again
                    continue
                self.records[rec["key"]] = rec

    def append(self, records: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
        self.records.update((r["key"], r) for r in records)


def prompt_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _journal(results: Path, kind: str, model_ref: str, params: dict) -> Journal:
    fp = models.resolve(model_ref).fingerprint
    tag = f"{stable_hash(json.dumps(params, sort_keys=True, default=str)):016x}"[:12]
    return Journal(results / "cache" / kind / f"{fp}-{tag}.jsonl")


def _cached_or_compute(journal: Journal, texts: list[str], batch_size: int, load, compute, meter: Meter) -> list[dict]:
    """Records for `texts` (in order); `compute(batch of texts) -> list of (value, tokens)` runs on the missing ones,
    longest first so that a batch pads little. `load()` (the model) runs first, only if something is missing, and
    outside the timing: the seconds recorded are the model's compute."""
    keys = [prompt_key(t if isinstance(t, str) else json.dumps(t, sort_keys=True)) for t in texts]
    missing = sorted({k: t for k, t in zip(keys, texts) if k not in journal.records}.items(),
                     key=lambda kv: -len(json.dumps(kv[1])))
    meter.cached += len(set(keys)) - len(missing)
    if missing:
        load()
    with progress(f"{journal.path.parent.name} {journal.path.stem}", len(missing), unit="prompts") as advance:
        for i in range(0, len(missing), batch_size):
            chunk = missing[i:i + batch_size]
            t0 = time.perf_counter()
            values = compute([t for _, t in chunk])
            share = (time.perf_counter() - t0) / len(chunk)
            journal.append([{"key": k, "value": v, "tokens": n, "seconds": share}
                            for (k, _), (v, n) in zip(chunk, values)])
            meter.computed += len(chunk)
            advance(len(chunk))
    out = [journal.records[k] for k in keys]
    for rec in {k: journal.records[k] for k in keys}.values():  # each distinct prompt once
        meter.generated_tokens += rec["tokens"]
        meter.compute_seconds += rec["seconds"]
    return out


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=2)
def causal_lm(model_ref: str, results: Path):
    """A causal LM and its tokenizer, ready for batched generation (left padding); kept for the next step."""
    model, tok = models.load(models.resolve(model_ref), results, device=_device())
    model.eval()
    tok.padding_side = "left"  # generated tokens must follow each prompt directly
    return model, tok


def _render(tok, prompt: str | list[dict], system: str | None, shots=()) -> str:
    """A prompt (or a chat row's history of turns, which keeps its own system turn) after the system prompt and the
    few-shot exchanges, ready for the assistant's turn."""
    history = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if history[0]["role"] == "system":
        system, history = history[0]["content"], history[1:]
    turns = [{"role": "system", "content": system}] if system else []
    turns += [{"role": role, "content": text} for q, a in shots for role, text in (("user", q), ("assistant", a))]
    return tok.apply_chat_template(turns + history, add_generation_prompt=True, tokenize=False)


def _autocast():
    import torch

    from harness.train.sft import autocast_dtype

    device = _device()
    dtype = autocast_dtype("auto", device)
    return torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None)


def generate(model_ref: str, prompts: list[str | list[dict]], p: GenParams, results: Path, meter: Meter
             ) -> list[list[str]]:
    """p.k responses per prompt (a string, or a conversation's turns before the response) from the model's chat
    template, greedy (temperature 0) or sampled."""
    import torch
    from transformers import GenerationConfig

    params = {k: v for k, v in asdict(p).items() if k != "batch_size"}
    journal = _journal(results, "generations", model_ref, params)
    load = functools.partial(causal_lm, model_ref, results)

    def compute(batch: list[str | list[dict]]) -> list[tuple[list[str], int]]:
        model, tok = causal_lm(model_ref, results)
        enc = tok([_render(tok, t, p.system, p.shots) for t in batch], return_tensors="pt", padding=True,
                  add_special_tokens=False).to(model.device)
        sample = p.temperature > 0
        cfg = GenerationConfig(max_new_tokens=p.max_new_tokens, do_sample=sample, num_return_sequences=p.k,
                               temperature=p.temperature if sample else None, top_p=p.top_p if sample else None,
                               top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        torch.manual_seed(stable_hash("generate", p.seed, batch) % 2**31)  # same batch, same samples
        with _autocast():
            out = model.generate(**enc, generation_config=cfg)
        new = out[:, enc["input_ids"].shape[1]:].cpu()
        end = new == tok.eos_token_id  # tokens written: up to and including the first end-of-sequence token
        written = torch.where(end.any(1), end.int().argmax(1) + 1, new.shape[1])
        texts = [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
        return [(texts[i * p.k:(i + 1) * p.k], int(written[i * p.k:(i + 1) * p.k].sum())) for i in range(len(batch))]

    return [rec["value"] for rec in _cached_or_compute(journal, prompts, p.batch_size, load, compute, meter)]


DEFAULT_JUDGE_PROMPT = ("Is the answer below correct, complete and given in the expected format?\n\n"
                        "Question: {prompt}\nAnswer: {response}\n\nReply with yes or no.")


def judge_yes(model_ref: str, pairs: list[tuple[str, str]], template: str, results: Path, meter: Meter,
              batch_size: int = 16) -> list[float]:
    """P(yes) / (P(yes) + P(no)) of the judge's first reply token, summed over the spellings yes/Yes/ yes/ Yes."""
    import torch

    journal = _journal(results, "judge", model_ref, {"template": template})
    load = functools.partial(causal_lm, model_ref, results)
    texts = [template.format(prompt=p, response=r) for p, r in pairs]

    def compute(batch: list[str]) -> list[tuple[float, int]]:
        model, tok = causal_lm(model_ref, results)
        ids = {w: sorted({tok(v, add_special_tokens=False)["input_ids"][0] for v in (w, w.capitalize(),
                                                                                       " " + w, " " + w.capitalize())})
               for w in ("yes", "no")}
        enc = tok([_render(tok, t, None) for t in batch], return_tensors="pt", padding=True,
                  add_special_tokens=False).to(model.device)
        with torch.no_grad(), _autocast():
            logits = model(**enc).logits[:, -1].float()  # left padding: the last position is the next token
        probs = torch.softmax(logits, dim=-1)
        yes, no = probs[:, ids["yes"]].sum(1), probs[:, ids["no"]].sum(1)
        return [(float(y / (y + n)) if y + n > 0 else 0.5, 0) for y, n in zip(yes, no)]

    return [rec["value"] for rec in _cached_or_compute(journal, texts, batch_size, load, compute, meter)]


@functools.lru_cache(maxsize=1)
def _reward_model(model_ref: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ref = models.resolve(model_ref)
    if ref.kind != "local":
        raise models.ModelError(f"reward model {model_ref!r}: expected a local Hugging Face sequence-classification "
                                f"folder")
    model = AutoModelForSequenceClassification.from_pretrained(ref.path, use_safetensors=True,
                                                               trust_remote_code=False).eval().to(_device())
    tok = AutoTokenizer.from_pretrained(ref.path, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


def reward(model_ref: str, pairs: list[tuple[str, str]], results: Path, meter: Meter, label: int | None = None,
           batch_size: int = 16) -> list[float]:
    """A sequence-classification reward model's score of each (prompt, response): the logit when it has one label,
    else the probability of `label` (default: the last label, 'good' by convention). The pair is rendered with the
    model's chat template when it has one, else passed as a text pair."""
    import torch

    journal = _journal(results, "reward", model_ref, {"label": label})
    sep = "\x00"  # a pair travels as one text through the cache

    def compute(batch: list[str]) -> list[tuple[float, int]]:
        model, tok = _reward_model(model_ref)
        split = [t.split(sep, 1) for t in batch]
        if tok.chat_template:
            texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                             tokenize=False) for p, r in split]
            enc = tok(texts, return_tensors="pt", padding=True, truncation=True, add_special_tokens=False)
        else:
            enc = tok([p for p, _ in split], [r for _, r in split], return_tensors="pt", padding=True,
                      truncation=True)
        with torch.no_grad():
            logits = model(**enc.to(model.device)).logits.float()
        scores = logits[:, 0] if logits.shape[1] == 1 else torch.softmax(logits, -1)[:, -1 if label is None else label]
        return [(float(s), 0) for s in scores]

    texts = [p + sep + r for p, r in pairs]
    return [rec["value"] for rec in _cached_or_compute(journal, texts, batch_size, lambda: _reward_model(model_ref),
                                                       compute, meter)]

