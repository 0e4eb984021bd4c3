"""Model references: built-in aliases, local HF folders and hub ids -> a fingerprint (cheap) and a loaded model.

Resolution must stay cheap (no torch import): planning a matrix and skipping finished cells use only fingerprints.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from harness import base


class ModelError(ValueError):
    pass


@dataclass(frozen=True)
class ModelRef:
    ref: str  # as the user wrote it
    kind: str  # builtin | local
    fingerprint: str
    description: str
    recipe: base.BaseRecipe | None = None  # builtin bases: how to build it
    path: str | None = None  # local folders


ALIASES = {name: f"the project's own {r.hidden}-wide, {r.layers}-layer Llama pretrained by `harness base build` "
                 f"({'test-sized' if name == 'micro' else 'the default world'})" for name, r in base.PRESETS.items()}


def _folder_fingerprint(path: Path) -> str:
    """config.json and the weight files' names and sizes: cheap, and changes when the checkpoint does."""
    h = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.safetensors.index.json")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def resolve(ref: str) -> ModelRef:
    if ref in base.PRESETS:
        recipe = base.PRESETS[ref]
        return ModelRef(ref, "builtin", recipe.id, ALIASES[ref], recipe=recipe)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"model {ref!r}: folder has no config.json (expected a Hugging Face model folder)")
        if not any(path.glob("*.safetensors")):
            raise ModelError(f"model {ref!r}: no *.safetensors weights (pickled .bin weights are not loaded)")
        return ModelRef(ref, "local", _folder_fingerprint(path), f"local folder {path.resolve()}",
                        path=str(path.resolve()))
    raise ModelError(f"model {ref!r}: not a built-in alias ({', '.join(ALIASES)}) nor a local folder")


def model_path(ref: ModelRef, results: Path, log=print) -> Path:
    """The folder to load from, building the built-in base if it is not cached yet."""
    if ref.kind == "builtin":
        return base.build_base(ref.recipe, results / "bases", log=log)
    return Path(ref.path)


def load(ref: ModelRef, results: Path, device: str = "cpu", attention: str = "sdpa"):
    """Model (float32 master weights) and tokenizer, offline, safetensors only, no remote code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_path(ref, results)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False,
                                                 dtype="float32", attn_implementation=attention).to(device)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tokenizer.chat_template is None:  # base models without one get the harness's plain template
        tokenizer.chat_template = base.PLAIN_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def describe(ref: ModelRef) -> dict:
    return {"ref": ref.ref, "kind": ref.kind, "fingerprint": ref.fingerprint, "description": ref.description,
            "recipe": json.loads(json.dumps(ref.recipe.__dict__)) if ref.recipe else None}
