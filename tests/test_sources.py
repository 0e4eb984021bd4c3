"""Data sources (harness.data.sources): JSONL rows and chat messages, datasets folders, the hub offline, and bad
rows named by file and line (or skipped and counted)."""

import json

import pytest

from harness.data import recipe, sources
from harness.spec import SpecError, parse_matrix


def test_chat_messages_become_prompt_and_response(tmp_path):
    path = tmp_path / "chat.jsonl"
    lines = [{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
             {"id": "m2", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                                       {"role": "user", "content": "and 3+3?"},
                                       {"role": "assistant", "content": "6"}]},
             {"prompt": "plain", "response": "row"}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows = sources.read_jsonl(path)
    assert (rows[0]["id"], rows[0]["prompt"], rows[0]["response"]) == ("chat-1", "Hi?", "Hello.")
    assert rows[1]["prompt"] == "System: Be brief.\n\nUser: 2+2?\n\nAssistant: 4\n\nUser: and 3+3?"
    assert rows[1]["response"] == "6" and rows[1]["id"] == "m2" and len(rows[1]["messages"]) == 5
    assert rows[2]["prompt"] == "plain"


BAD_CHAT = [
    ({"messages": []}, r"messages: expected a non-empty list"),
    ({"messages": [{"role": "user", "content": "q"}]}, r"messages: the last turn must be the assistant's"),
    ({"messages": [{"role": "bot", "content": "q"}]}, r"messages\.0: expected \{role: system\|user\|assistant"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, r"messages: expected a user turn before"),
    ([1, 2], r"expected an object, got list"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"},
                   {"role": "assistant", "content": "a"}]}, r"messages: a system turn is only allowed first"),
    ({"conversations": [{"from": "bing", "value": "q"}]}, r"conversations\.0: expected \{from: human\|gpt\|system"),
    ({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
     r"messages: the last turn must be the assistant's"),
]


def test_sharegpt_rows_are_conversations(tmp_path):
    """ShareGPT's {conversations: [{from, value}]} rows (human, gpt, system) read as messages."""
    path = tmp_path / "sharegpt.jsonl"
    raw = {"id": "sg1", "conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                                           {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "Bye"},
                                           {"from": "gpt", "value": "Goodbye."}]}
    path.write_text(json.dumps(raw) + "\n")
    (row,) = sources.read_jsonl(path)
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert row["response"] == "Goodbye." and "conversations" not in row
    assert sources.assistant_turns(row) == ["Hello.", "Goodbye."]
    assert sources.history(row) == row["messages"][:-1]
    changed = sources.with_response(row, "See you.")
    assert changed["messages"][-1]["content"] == changed["response"] == "See you." and row["response"] == "Goodbye."


@pytest.mark.parametrize("bad,message", BAD_CHAT)
def test_bad_chat_lines_name_file_and_line(tmp_path, bad, message):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(SpecError, match=rf"chat\.jsonl:3: {message}"):
        sources.read_jsonl(path)


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(SpecError, match=r"sft\.jsonl:2: expected an object with string fields prompt and response"):
        sources.read_jsonl(path)
    path.write_text('{"prompt": "a", "response": "b"}\nnot json\n')
    with pytest.raises(SpecError, match=r"sft\.jsonl:2: invalid JSON"):
        sources.read_jsonl(path)


def test_skip_bad_counts_and_keeps_going(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\nnot json\n{"prompt": 1}\n{"prompt": "c", "response": "d"}\n')
    rows, report = sources.load_source({"kind": "jsonl", "path": str(path), "skip_bad": True})
    assert [r["prompt"] for r in rows] == ["a", "c"]
    assert (report.n_read, report.n_bad) == (4, 2) and report.bad[0].endswith("mixed.jsonl:2: invalid JSON "
                                                                              "(Expecting value)")
    path.write_text("not json\n")
    with pytest.raises(SpecError, match=r"mixed\.jsonl: no examples \(1 malformed rows skipped\)"):
        sources.load_source({"kind": "jsonl", "path": str(path), "skip_bad": True})
    path.write_text('{"id": "x", "prompt": "a", "response": "b"}\n{"id": "x", "prompt": "c", "response": "d"}\n')
    with pytest.raises(SpecError, match=r"mixed\.jsonl: id 'x' is used by more than one row"):
        sources.load_source({"kind": "jsonl", "path": str(path)})


def test_datasets_folder_source_and_its_bad_rows(tmp_path):
    from datasets import Dataset, DatasetDict

    good = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(3)]
    Dataset.from_list(good).save_to_disk(str(tmp_path / "plain"))
    DatasetDict({"train": Dataset.from_list(good + [{"question": "q", "answer": None}])}).save_to_disk(
        str(tmp_path / "dict"))
    m = parse_matrix("""
sources:
  plain: {path: PLAIN, columns: {prompt: question, response: answer}}
  dict: {path: DICT, split: train, columns: {prompt: question, response: answer}}
  dict_skip: {path: DICT, split: train, columns: {prompt: question, response: answer}, skip_bad: true}
  nosplit: {path: DICT}
arms: {a: {source: plain}, b: {source: dict}, c: {source: dict_skip}, d: {source: nosplit}}
""".replace("PLAIN", str(tmp_path / "plain")).replace("DICT", str(tmp_path / "dict")))
    rec = recipe.resolve_recipes(m)
    rows, _ = sources.load_source(rec["a"].source)
    assert [(r["id"], r["prompt"], r["response"]) for r in rows][0] == ("plain-0", "q0", "a0")
    with pytest.raises(SpecError, match=r"dict\[?.*row 3: expected an object with string fields question and "
                                        r"answer"):
        sources.load_source(rec["b"].source)
    rows, report = sources.load_source(rec["c"].source)
    assert len(rows) == 3 and report.n_bad == 1
    with pytest.raises(SpecError, match="a DatasetDict; set split to one of train"):
        sources.load_source(rec["d"].source)
    (tmp_path / "notdata").mkdir()
    with pytest.raises(SpecError, match="not a folder written by datasets' save_to_disk"):
        recipe.resolve_recipes(parse_matrix(f"arms: {{a: {{source: {tmp_path / 'notdata'}}}}}"))


def test_hub_source_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rec = recipe.resolve_recipes(parse_matrix("arms: {a: {source: 'hub:someone/sft-data'}}"))
    assert rec["a"].source == {"kind": "hub", "id": "someone/sft-data"}
    with pytest.raises(SpecError, match=r"^source hub:someone/sft-data: offline \(HF_HUB_OFFLINE"):
        sources.load_source(rec["a"].source)
