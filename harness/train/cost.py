"""What a cell cost: FLOPs, memory, device-hours and an estimated price. Every price here is an ESTIMATE.

Training FLOPs count the work the harness actually does (Kaplan et al. 2020, "Scaling Laws", section 2.1):
  forward  = 2 N_body per token            (each non-embedding weight: one multiply-add)
           + 2 n_layer ctx d_model          (attention scores and weighted values: QK^T and AV, ctx keys per token)
           + 2 V d_model per LABELLED token (the LM head runs only where a label exists, see train.label_loss)
  backward = 2x forward for the activation gradients (every method needs those, frozen weights included)
           + 2x forward for the weight gradients, but only of weights that train.
So full fine-tuning costs 6 N per token and LoRA about 4 N + 6 N_adapter: the backward pass through frozen weights
still produces activation gradients, only the weight-gradient third is saved. `ctx` is the mean number of keys a token
attends to: (row length + 1) / 2 for causal rows.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

# Dense bf16 peak FLOP/s for MFU (vendor datasheets, without sparsity). CPUs have no entry: no MFU on CPU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12,
              "RTX 4090": 165e12, "T4": 65e12}

# USD per device-hour, on-demand list prices of late 2025, rounded; override with HARNESS_PRICE_PER_HOUR.
# "cpu" is a whole small VM (2 vCPU, ~8-24 GB), the machine this harness's defaults were measured on.
PRICES = {"H100": 2.50, "H200": 3.50, "A100": 1.50, "L40S": 1.00, "A10G": 1.00, "L4": 0.70, "RTX 4090": 0.60,
          "T4": 0.35, "cpu": 0.10}


@dataclass(frozen=True)
class Shape:
    """What the FLOPs formula needs to know about a model."""
    body_params: int  # the model's parameters but token embeddings and LM head (Kaplan's N), adapters excluded
    trained_body_params: int  # of those, the ones that receive weight gradients (all for full FT, none for LoRA)
    adapter_params: int  # LoRA's A and B matrices (0 for full FT)
    n_layer: int
    d_model: int
    vocab: int
    head_trainable: bool


def model_shape(model) -> Shape:
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    emb, head = core.get_input_embeddings(), core.get_output_embeddings()
    skip = {id(p) for m in (emb, head) for p in m.parameters()}
    body = [(n, p) for n, p in model.named_parameters() if id(p) not in skip]
    adapters = [p for n, p in body if "lora_" in n]
    base = [p for n, p in body if "lora_" not in n]
    cfg = core.config
    return Shape(body_params=sum(p.numel() for p in base), trained_body_params=sum(p.numel() for p in base
                                                                                   if p.requires_grad),
                 adapter_params=sum(p.numel() for p in adapters), n_layer=cfg.num_hidden_layers,
                 d_model=cfg.hidden_size, vocab=cfg.vocab_size,
                 head_trainable=any(p.requires_grad for p in head.parameters()))


def train_flops(shape: Shape, tokens: int, label_tokens: int, mean_row_length: float) -> float:
    """Training FLOPs for `tokens` (non-pad) tokens of which `label_tokens` carry loss; see the module docstring."""
    ctx = (mean_row_length + 1) / 2
    frozen = shape.body_params - shape.trained_body_params
    # fwd 2 + activation grads 2 for every weight; + weight grads 2 for the ones that train (adapters always do)
    body = 6 * shape.trained_body_params + 4 * frozen + 6 * shape.adapter_params
    attention = 6 * shape.n_layer * ctx * shape.d_model
    head = (6 if shape.head_trainable else 4) * shape.vocab * shape.d_model
    return tokens * (body + attention) + label_tokens * head


def peak_flops(device_name: str | None) -> float | None:
    return next((v for k, v in PEAK_FLOPS.items() if device_name and k in device_name), None)


def price_per_hour(hardware: str) -> float:
    """USD per device-hour for a hardware description (see PRICES); HARNESS_PRICE_PER_HOUR overrides."""
    if os.environ.get("HARNESS_PRICE_PER_HOUR"):
        return float(os.environ["HARNESS_PRICE_PER_HOUR"])
    return next((v for k, v in PRICES.items() if k != "cpu" and k in hardware), PRICES["cpu"])


def hardware(device: str, threads: int) -> str:
    if device.startswith("cuda"):
        import torch

        return f"cuda: {torch.cuda.get_device_name()}"
    name = ""
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        name = platform.processor() or platform.machine()
    return f"cpu: {name} ({threads} threads)"


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


class PeakMemory:
    """Peak resident memory of this process while the block runs (and peak CUDA memory when on a GPU).

    ru_maxrss is a lifetime maximum and a worker runs many cells, so RSS is sampled from /proc every 20 ms instead.
    """

    def __init__(self, device: str = "cpu"):
        self.device, self.rss, self.gpu = device, 0, None
        self._stop = threading.Event()

    def _rss(self) -> int:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self.rss = max(self.rss, self._rss())

    def __enter__(self) -> "PeakMemory":
        self.rss = self._rss()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.rss = max(self.rss, self._rss())
        if self.device.startswith("cuda"):
            import torch

            self.gpu = torch.cuda.max_memory_allocated()


# --- memory: the plan before a run ---------------------------------------------------------------------------------
# Per-device peak of one training process, for a Llama-style decoder (GQA attention, gated MLP, RMSNorm: Llama,
# Mistral, Qwen2, SmolLM2 and the harness's own bases), estimated from its config alone (no weights are read).
# What the parts hold, in bytes (P parameters, T of them trained, N devices sharing a shard under fsdp, 1 under ddp):
#   weights     4 P / N (fp32 master weights; LoRA's frozen linears 2 bytes under bf16 autocast, see
#               recipe.cast_frozen_linears); fsdp adds what is gathered at once: the root (embeddings, final norm,
#               head) for the whole step and two decoder layers (the current one and the next, prefetched);
#               bf16 autocast adds its bf16 copy of every trained linear weight and of the head, kept for the
#               backward pass
#               (on a GPU under fsdp the weights are gathered in bf16 by MixedPrecisionPolicy instead: no copy)
#   gradients   4 T / N; fsdp adds the unsharded gradients waiting for their reduce-scatter: one layer's, and the
#               root's (the head's is computed first in the backward pass and reduced last), in bf16 on a GPU
#   optimizer   8 T / N (AdamW's two fp32 moments)
#   activations what the backward pass needs, per token of the micro-batch (b rows of the cell's max_length):
#               each decoder layer keeps its fp32 residual input and norms (4 x 4h), the linears' inputs and
#               outputs (q, k, v, rotated q and k, attention output, o, gate, up, act, product: e x (5h + 3 kv + 4 I),
#               e = 2 bytes under bf16 autocast, else 4), and with eager attention (CPU) the softmax of every head over
#               the row (a L x (4 + e)); gradient checkpointing keeps only each layer's input (4h) and recomputes one
#               layer at a time. The LM head keeps fp32 log-probabilities over the vocabulary for every labelled
#               token (4 V) plus, while its backward runs, their gradient and the logits (4 V + e V): the plan
#               assumes every token is labelled (an upper bound: prompts carry no loss)
#   runtime     the process itself: Python, torch, transformers and peft imported (~0.4 GiB RSS measured on a CPU),
#               or the CUDA context and kernels' workspaces on a GPU (~1 GiB)
GIB = 2**30
RUNTIME_BYTES = {"cpu": int(0.4 * GIB), "cuda": 1 * GIB}


@dataclass(frozen=True)
class Arch:
    """What the memory plan needs to know about a model, read from its transformers config."""
    vocab: int
    d_model: int
    n_layer: int
    n_heads: int
    kv_dim: int  # key/value width: d_model x kv heads / heads (grouped-query attention)
    intermediate: int
    tied: bool  # the LM head is the input embedding

    @classmethod
    def from_config(cls, c) -> "Arch":
        heads = c.num_attention_heads
        return cls(c.vocab_size, c.hidden_size, c.num_hidden_layers, heads,
                   c.hidden_size * (getattr(c, "num_key_value_heads", None) or heads) // heads, c.intermediate_size,
                   bool(getattr(c, "tie_word_embeddings", False)))

    def linears(self) -> dict[str, tuple[int, int]]:
        """One decoder layer's linear layers, (in, out) features, by the names peft targets."""
        h, kv, i = self.d_model, self.kv_dim, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, i),
                "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_params(self) -> int:
        return sum(a * b for a, b in self.linears().values()) + 2 * self.d_model  # + two RMSNorm weights

    @property
    def root_params(self) -> int:
        """Embeddings, final norm, head: what is not in a decoder layer."""
        return self.vocab * self.d_model * (1 if self.tied else 2) + self.d_model

    @property
    def params(self) -> int:
        return self.n_layer * self.layer_params + self.root_params


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak bytes of one training process (one device); see the notes above `Arch`."""
    weights: int
    gradients: int
    optimizer: int
    activations: int
    runtime: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.runtime


def lora_params(arch: Arch, method: dict) -> tuple[int, int]:
    """(adapter parameters, frozen linear parameters they wrap) of a LoRA method over every decoder layer."""
    targets = method.get("target_modules", "all-linear")
    names = arch.linears() if targets == "all-linear" else {k: v for k, v in arch.linears().items()
                                                           if k in ([targets] if isinstance(targets, str) else targets)}
    return (arch.n_layer * sum(method["r"] * (a + b) for a, b in names.values()),
            arch.n_layer * sum(a * b for a, b in names.values()))


def memory_estimate(arch: Arch, method: dict, train: dict, device: str, bf16: bool, label_tokens: int | None = None,
                    row_length: int | None = None) -> MemoryEstimate:
    """Peak memory of one of the cell's `train["devices"]` processes. `train`: a cell's train config; the
    micro-batch is batch_size / (devices x grad_accum) rows of `row_length` (default: max_length) tokens, of which
    `label_tokens` (default: all) carry loss."""
    cuda = device.startswith("cuda")
    n = train["devices"] if train.get("strategy", "ddp") == "fsdp" else 1
    lora = method["kind"] == "lora"
    adapters, wrapped = lora_params(arch, method) if lora else (0, 0)
    trained = adapters if lora else arch.params
    e = 2 if bf16 else 4
    frozen_bytes = 2 if bf16 else 4  # cast_frozen_linears stores LoRA's frozen linears in the autocast dtype
    stored = 4 * (arch.params - wrapped) + frozen_bytes * wrapped + 4 * adapters
    weights = stored / n
    gathered_bf16 = cuda and bf16 and n > 1  # fsdp's MixedPrecisionPolicy
    if n > 1:
        per_param = 2 if gathered_bf16 else stored / (arch.params + adapters)
        weights += (arch.root_params + 2 * arch.layer_params) * per_param * (n - 1) / n
    if bf16 and not gathered_bf16:  # autocast's bf16 copies, kept for the backward: the head's (frozen for LoRA, whose
        # linears are bf16 already) and full FT's trained linears
        weights += 2 * ((0 if lora else arch.n_layer * (arch.layer_params - 2 * arch.d_model))
                        + arch.vocab * arch.d_model)
    unsharded = adapters // arch.n_layer if lora else arch.root_params + arch.layer_params
    gradients = 4 * trained / n + ((2 if gathered_bf16 else 4) * unsharded if n > 1 else 0)
    optimizer = 8 * trained / n
    rows = max(1, train["batch_size"] // (train["devices"] * train.get("grad_accum", 1)))
    length = row_length or train["max_length"]
    tokens = rows * length
    h, kv, i = arch.d_model, arch.kv_dim, arch.intermediate
    eager = train.get("attention", "auto") == "eager" or (train.get("attention", "auto") == "auto" and not cuda)
    layer = 16 * h + e * (5 * h + 3 * kv + 4 * i) + (arch.n_heads * length * (4 + (e if bf16 else 0)) if eager else 0)
    kept = arch.n_layer * 4 * h + layer if train.get("gradient_checkpointing") else arch.n_layer * layer
    head = (label_tokens if label_tokens is not None else tokens) * arch.vocab * (8 + e)
    return MemoryEstimate(int(weights), int(gradients), int(optimizer), int(tokens * kept + head),
                          RUNTIME_BYTES["cuda" if cuda else "cpu"])
