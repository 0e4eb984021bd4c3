"""Loading a data arm's source: every user row becomes {id, prompt, response, ...its other fields}.

A malformed row stops the build with its location (file:line, folder or hub row), or with skip_bad is skipped and
counted in the card.

Sources:
  skills_pool                 the seeded skills-world pool (a named source sets size, seed, mix, defects)
  a .jsonl file               one JSON object per line: {prompt, response} or a chat {messages: [{role, content}]}
  a data set folder           written by Hugging Face `datasets` save_to_disk (a DatasetDict needs `split`)
  hub:OWNER/NAME              a hub data set; needs a network and HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0
A named source (`sources:` in a matrix) takes `path` or `hub` plus: skip_bad (skip and count malformed rows instead
of stopping), split, columns (e.g. {prompt: question, response: answer}), and for hub: name, revision.

Chat rows stay conversations: `messages` (system, user and assistant turns; ShareGPT's `conversations` of
{from: human|gpt|system, value} is read as the same) is kept on the row, and training renders the whole of it with the
model's chat template, loss on the assistant turns (harness/train/sft.py). The last turn must be the assistant's and
the first after an optional system turn the user's. For curation and display a chat row also carries `prompt`, the
history before the last assistant turn as a plain transcript ("System: ...\n\nUser: ...\n\nAssistant: ..."; a
single user turn as is), and `response`, the last assistant turn; curation reads a row's text through
harness/data/curate/base.py `parts_of` (its prompt, its assistant turns, or the whole conversation).
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness.data import world
from harness.spec import SpecError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _sharegpt(turns, where: str) -> list[dict]:
    """ShareGPT's {from, value} turns -> {role, content} messages."""
    if not isinstance(turns, list):
        raise SpecError(f"{where}: conversations: expected a list of {{from, value}} turns")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or t.get("from") not in SHAREGPT_ROLES:
            raise SpecError(f"{where}: conversations.{i}: expected {{from: human|gpt|system, value: a string}}")
        out.append({"role": SHAREGPT_ROLES[t["from"]], "content": t.get("value")})
    return out


def check_messages(messages, where: str) -> list[dict]:
    """A conversation's turns, checked: each {role, content}, the first after an optional system turn the user's,
    the last the assistant's."""
    if not isinstance(messages, list) or not messages:
        raise SpecError(f"{where}: messages: expected a non-empty list of {{role, content}} turns")
    for i, t in enumerate(messages):
        if not isinstance(t, dict) or t.get("role") not in ROLES or not isinstance(t.get("content"), str):
            raise SpecError(f"{where}: messages.{i}: expected {{role: system|user|assistant, content: a string}}")
    if messages[-1]["role"] != "assistant":
        raise SpecError(f"{where}: messages: the last turn must be the assistant's (the response to learn)")
    first = 1 if messages[0]["role"] == "system" else 0
    if messages[first]["role"] != "user":
        raise SpecError(f"{where}: messages: expected a user turn before the assistant's response")
    if any(t["role"] == "system" for t in messages[1:]):
        raise SpecError(f"{where}: messages: a system turn is only allowed first")
    return messages


def render_messages(messages: list[dict]) -> tuple[str, str]:
    """A checked chat -> (prompt, response) for curation and display: see the module docstring."""
    history = messages[:-1]
    if len(history) == 1:
        return history[0]["content"], messages[-1]["content"]
    return "\n\n".join(f"{t['role'].capitalize()}: {t['content']}" for t in history), messages[-1]["content"]


def assistant_turns(row: dict) -> list[str]:
    """The texts that carry loss: a chat row's assistant turns, or a row's response."""
    if row.get("messages"):
        return [t["content"] for t in row["messages"] if t["role"] == "assistant"]
    return [row["response"]]


def history(row: dict) -> str | list[dict]:
    """What a model answers to write a row's response: its prompt, or a chat row's turns before the last one."""
    m = row.get("messages")
    return m[:-1] if m and len(m) > 2 else row["prompt"]


def with_response(row: dict, text: str, **extra) -> dict:
    """The row with its response replaced (distillation, best-of-K): in a chat row, the last assistant turn."""
    out = {**row, "response": text, **extra}
    if row.get("messages"):
        out["messages"] = row["messages"][:-1] + [{**row["messages"][-1], "content": text}]
    return out


def to_example(raw, where: str, default_id: str, columns: dict | None = None) -> dict:
    """One user row -> an example; raises SpecError naming `where` (file:line, or folder/hub row)."""
    col = {"prompt": "prompt", "response": "response", "messages": "messages", **(columns or {})}
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected an object, got {type(raw).__name__}")
    rid = str(raw.get("id", default_id))
    if raw.get(col["messages"]) is None and raw.get("conversations") is not None:
        turns = _sharegpt(raw["conversations"], where)
        raw = {k: v for k, v in raw.items() if k != "conversations"} | {col["messages"]: turns}
    if raw.get(col["messages"]) is not None:
        messages = check_messages(raw[col["messages"]], where)
        prompt, response = render_messages(messages)
        rest = {k: v for k, v in raw.items() if k != col["messages"]}
        return {**rest, "id": rid, "messages": messages, "prompt": prompt, "response": response}
    prompt, response = raw.get(col["prompt"]), raw.get(col["response"])
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise SpecError(f"{where}: expected an object with string fields {col['prompt']} and {col['response']} "
                        f"(or a {col['messages']} list)")
    return {**raw, "id": rid, "prompt": prompt, "response": response}


@dataclass
class SourceReport:
    n_read: int = 0  # rows or non-empty lines read
    n_bad: int = 0  # malformed rows skipped (skip_bad)
    bad: list[str] | None = None  # the first few reasons

    def skip(self, reason: str) -> None:
        self.n_bad += 1
        if len(self.bad) < 5:
            self.bad.append(reason)


def read_jsonl(path: Path, skip_bad: bool = False, columns: dict | None = None,
               report: SourceReport | None = None) -> list[dict]:
    """User SFT data: one JSON object per line, {prompt, response} or {messages}."""
    report = report if report is not None else SourceReport(bad=[])
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            report.n_read += 1
            try:
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SpecError(f"{path}:{n}: invalid JSON ({e.msg})") from None
                rows.append(to_example(raw, f"{path}:{n}", f"{path.stem}-{n}", columns))
            except SpecError as e:
                if not skip_bad:
                    raise
                report.skip(str(e))
    return rows


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _open_hf(source: dict):
    """The source's rows as a datasets.Dataset, from a save_to_disk folder or (with a network) the hub."""
    import datasets

    split = source.get("split")
    if source["kind"] == "hf_disk":
        ds = datasets.load_from_disk(source["path"])
        where = source["path"]
    else:
        where = f"hub:{source['id']}"
        if _offline():
            raise SpecError(f"source {where}: offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set); with a network "
                            f"set HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0, or save_to_disk elsewhere and use the folder")
        from urllib.parse import urlparse

        from huggingface_hub import constants

        url = urlparse(constants.ENDPOINT)
        try:  # fail in seconds, not after the client's retries, when there is no network
            socket.create_connection((url.hostname, url.port or 443), timeout=5).close()
        except OSError as e:
            raise SpecError(f"source {where}: cannot reach {constants.ENDPOINT} ({e})") from None
        ds = datasets.load_dataset(source["id"], source.get("name"), split=split or "train",
                                   revision=source.get("revision"))
        split = None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise SpecError(f"source {where}: a DatasetDict; set split to one of {', '.join(ds)}")
        ds = ds[split]
    return ds, where


def load_source(source: dict) -> tuple[list[dict], SourceReport]:
    report = SourceReport(bad=[])
    if source["kind"] == "skills_pool":
        rows = world.generate_pool(source["size"], source["seed"], source["mix"], source["defects"])
        report.n_read = len(rows)
        return rows, report
    skip_bad, columns = source.get("skip_bad", False), source.get("columns")
    if source["kind"] == "jsonl":
        rows = read_jsonl(Path(source["path"]), skip_bad, columns, report)
        where = source["path"]
    else:
        ds, where = _open_hf(source)
        name = Path(where).name.replace("hub:", "").replace("/", "-")
        rows = []
        for i, raw in enumerate(ds):
            report.n_read += 1
            try:
                rows.append(to_example(raw, f"{where} row {i}", f"{name}-{i}", columns))
            except SpecError as e:
                if not skip_bad:
                    raise
                report.skip(str(e))
    if not rows:
        raise SpecError(f"{where}: no examples" + (f" ({report.n_bad} malformed rows skipped)" if report.n_bad else ""))
    repeated = next((k for k, n in Counter(r["id"] for r in rows).items() if n > 1), None)
    if repeated is not None:  # every decision names an example by its id
        raise SpecError(f"{where}: id {repeated!r} is used by more than one row; ids must be unique")
    return rows, report


def validate_sources(sources: list[dict]) -> None:
    """Read every user data source once (parse, schema, malformed rows named by file:line), so that a bad row stops
    planning before any model is built; the skills pool is generated and has nothing to check."""
    seen = set()
    for source in sources:
        key = json.dumps(source, sort_keys=True)
        if source["kind"] != "skills_pool" and key not in seen:
            seen.add(key)
            load_source(source)


