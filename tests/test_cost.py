import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from harness.train import cost
from harness.train.recipe import prepare_method


def _model():
    cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def test_flops_formula_full_and_lora_on_a_known_config():
    # per layer: attention 4 x 64 x 64 = 16,384; MLP 3 x 64 x 128 = 24,576; two RMSNorms 128 -> 41,088;
    # two layers + final norm (64) = 82,240 body parameters; the tied 100 x 64 embedding is the head.
    full = cost.model_shape(prepare_method(_model(), {"kind": "full"}, seed=0))
    assert (full.body_params, full.trained_body_params, full.adapter_params) == (82_240, 82_240, 0)
    # 1,000 tokens of which 100 carry loss, rows of 9 tokens (each token attends to (9 + 1) / 2 = 5 keys):
    # 1000 x (6 x 82,240 + 6 x 2 x 5 x 64) + 100 x 6 x 100 x 64
    assert cost.train_flops(full, 1000, 100, 9) == 1000 * (6 * 82_240 + 3_840) + 100 * 38_400 == 501_120_000

    lora = cost.model_shape(prepare_method(_model(), {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0,
                                                      "target_modules": "all-linear"}, seed=0))
    # adapters r x (in + out): q, k, v, o 4 x 4 x 128 = 2,048; gate, up 2 x 4 x 192 = 1,536; down 4 x 192 = 768
    assert (lora.body_params, lora.trained_body_params, lora.adapter_params) == (82_240, 0, 2 * 4_352)
    assert not lora.head_trainable
    # frozen weights still cost forward + activation gradients (4 N); adapters the full 6; the frozen head 4 V d
    assert cost.train_flops(lora, 1000, 100, 9) == 1000 * (4 * 82_240 + 6 * 8_704 + 3_840) + 100 * 25_600
    assert cost.train_flops(lora, 1000, 100, 9) / cost.train_flops(full, 1000, 100, 9) == pytest.approx(0.773, abs=1e-3)


def test_prices_and_peaks(monkeypatch):
    assert cost.price_per_hour("cuda: NVIDIA H100 80GB HBM3") == cost.PRICES["H100"]
    assert cost.price_per_hour("cpu: AMD EPYC (2 threads)") == cost.PRICES["cpu"]
    monkeypatch.setenv("HARNESS_PRICE_PER_HOUR", "7.5")
    assert cost.price_per_hour("cuda: NVIDIA H100") == 7.5
    assert cost.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12 and cost.peak_flops(None) is None


def test_peak_memory_sees_an_allocation():
    import numpy as np

    with cost.PeakMemory() as m:
        before = m.rss
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        import time
        time.sleep(0.1)
        del block
    assert m.rss - before >= 48 * 2**20
