"""`harness base build`: the tiny base model, pretrained here from text CPython ships and the skills world.

A byte-level BPE tokenizer (digits split one by one, so that arithmetic is learnable at this size) and a small Llama,
trained as a plain causal LM (loss on every token) with the same loop as fine-tuning. The result is an HF folder
cached under $HARNESS_CACHE/bases/<name>-<hash>/ (harness/core/cache.py), where the hash covers the recipe, the
Python version (the prose comes from its stdlib) and the harness data version. Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness import DATA_VERSION
from harness.core.cache import build_once, cache_dir
from harness.core.ids import stable_hash
from harness.core.progress import progress
from harness.data.corpus import pretraining_texts, python_version_tag

# The template the tiny model is fine-tuned and evaluated with; also the fallback for models that ship none.
# Turns are separated before a turn, not after one, so nothing follows the final end-of-sequence token.
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if not loop.first %}\n\n{% endif %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}"
    "{% else %}### Response:\n{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}\n\n### Response:\n{% endif %}"
)
EOS, PAD = "<|endoftext|>", "<|pad|>"


@dataclass(frozen=True)
class BaseRecipe:
    name: str = "tiny"
    vocab_size: int = 2048
    # 0.68M parameters: at width 96 a fine-tuning step costs 0.67x width 128's (1.1M; 63 vs 95 ms on one AVX2 core),
    # pretrains to the same loss (2.61 vs 2.59) and keeps the demo's verdicts (docs/benchmarks.md)
    hidden: int = 96
    layers: int = 4
    heads: int = 3  # head size 32
    intermediate: int = 288  # 3 x hidden
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 400  # 400 x 16 x 256 = 1.6M tokens, about 3 passes over the ~0.5M-token corpus
    lr: float = 3e-3  # small models take a high lr; warm-up 5% keeps the first steps stable
    seed: int = 0
    fact_repeats: int = 60  # each world fact in 60 shuffled phrasings: ~20% of the corpus, enough to memorise
    n_demos: int = 6000  # skill demonstrations in plain prose
    max_docs: int | None = None  # cap the corpus (test presets)

    @property
    def id(self) -> str:
        h = stable_hash(dataclasses.asdict(self), python_version_tag(), DATA_VERSION)
        return f"{self.name}-{h:016x}"[:len(self.name) + 13]


PRESETS = {
    "tiny": BaseRecipe(),
    # ~40k params, 20 steps: a few seconds, for tests and smoke runs; it learns little
    "micro": BaseRecipe(name="micro", vocab_size=384, hidden=32, layers=2, heads=2, intermediate=64, seq_len=128,
                        batch_size=8, steps=20, lr=1e-2, fact_repeats=2, n_demos=400, max_docs=120),
}


def train_tokenizer(texts: list[str], vocab_size: int, model_max_length: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                 model_max_length=model_max_length)
    hf.chat_template = PLAIN_CHAT_TEMPLATE
    return hf


def pretraining_batches(token_ids: list[int], seq_len: int, batch_size: int, seed: int):
    """Endless batches of seq_len windows over the concatenated corpus, reshuffled each pass."""
    import numpy as np
    import torch

    from harness.train.sft import Batch

    n = len(token_ids) // seq_len
    blocks = torch.tensor(token_ids[: n * seq_len]).view(n, seq_len)
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            x = blocks[order[i:i + batch_size]]
            yield Batch(x, x, None, None, x.numel())  # full rows: no padding, no mask


def build_base(recipe: BaseRecipe, root: Path | None = None, on_step: Callable | None = None, log=print) -> Path:
    """Build (or find cached) the base model under ROOT (default: the shared cache's bases/); returns its HF folder.
    Two processes asking at once build it once."""
    out = (root or cache_dir("bases")) / recipe.id
    return build_once(out, lambda tmp: _pretrain(recipe, tmp, on_step, log),
                      done=lambda p: (p / "config.json").exists())


def _pretrain(recipe: BaseRecipe, tmp: Path, on_step: Callable | None, log) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.train.sft import optimize

    log(f"base {recipe.id}: not in the cache ({tmp.parent}), pretraining it once")
    t0 = time.perf_counter()
    texts = pretraining_texts(seed=recipe.seed, fact_repeats=recipe.fact_repeats, n_demos=recipe.n_demos)
    if recipe.max_docs:
        texts = texts[: recipe.max_docs]
    tokenizer = train_tokenizer(texts, recipe.vocab_size, model_max_length=2 * recipe.seq_len)
    ids: list[int] = []
    # documents are longer than the model's context; the stream is cut into seq_len windows below
    for enc in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
        ids += enc.ids + [tokenizer.eos_token_id]
    log(f"base {recipe.id}: tokenizer ({len(tokenizer)} tokens) and corpus ({len(ids):,} tokens) "
        f"in {time.perf_counter() - t0:.1f}s")
    torch.manual_seed(recipe.seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=recipe.hidden, intermediate_size=recipe.intermediate,
                         num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads,
                         num_key_value_heads=recipe.heads, max_position_embeddings=2 * recipe.seq_len,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    config._attn_implementation = "eager"  # the faster kernel on CPU at this size (see train.attention_for)
    model = LlamaForCausalLM(config)
    with progress(f"base {recipe.id}: pretraining", recipe.steps, unit="steps") as advance:  # 2-3 min for tiny
        curve = optimize(model, pretraining_batches(ids, recipe.seq_len, recipe.batch_size, recipe.seed),
                         total_steps=recipe.steps, lr=recipe.lr, schedule="cosine", warmup=0.05,
                         weight_decay=0.1, on_step=on_step or (lambda rec, total: advance(1)),
                         fused=False)  # the per-parameter AdamW the bases were first built with: a base id hashes its
                                       # recipe, so its weights must not change under it
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    (tmp / "harness_base.json").write_text(json.dumps({
        "recipe": dataclasses.asdict(recipe), "id": recipe.id, "params": n_params, "corpus_tokens": len(ids),
        "final_loss": curve[-1].loss, "seconds": time.perf_counter() - t0, "python": python_version_tag()}, indent=1))
    log(f"base {recipe.id}: {n_params / 1e6:.2f}M params, final loss {curve[-1].loss:.3f}, "
        f"{time.perf_counter() - t0:.0f}s")
