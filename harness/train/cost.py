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
