"""bench.py: FLOPs against a hand count, the device logic, and timings on CPU models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmdistill import bench


class TwoLinear(nn.Module):
    """Embedding [V, d] -> Linear d->h -> Linear h->c, called like an HF model (input_ids, attention_mask)."""

    def __init__(self, vocab=50, d=8, h=16, c=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.up = nn.Linear(d, h)
        self.down = nn.Linear(h, c)
        self.seen_devices = []

    def forward(self, input_ids, attention_mask=None):
        self.seen_devices.append(input_ids.device)
        return self.down(torch.relu(self.up(self.embed(input_ids))))


def test_forward_gflops_equals_a_hand_count():
    model = TwoLinear()
    batch = {"input_ids": torch.randint(0, 50, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    tokens = 2 * 5
    hand = 2 * tokens * (8 * 16 + 16 * 3)  # two matmuls, a multiply and an add per weight per token
    assert bench.forward_gflops(model, batch) == pytest.approx(hand / 1e9)
    assert model.seen_devices == [torch.device("cpu")]


def test_model_device_follows_the_weights():
    assert bench.model_device(TwoLinear()) == torch.device("cpu")
    assert bench.model_device(nn.ReLU()) == torch.device("cpu")  # no parameters: CPU

    class Reports:
        device = torch.device("cpu")

        def parameters(self):
            raise AssertionError("a model that states its device is not asked for its parameters")

    assert bench.model_device(Reports()) == torch.device("cpu")


def test_latency_and_static_figures_on_a_cpu_model(tmp_path):
    model = TwoLinear()
    make_batch = lambda size, length: {"input_ids": torch.randint(0, 50, (size, length))}  # noqa: E731
    assert bench.latency_ms(model, make_batch(2, 7), repeats=3, warmup=1) > 0
    assert all(device.type == "cpu" for device in model.seen_devices)
    figures = bench.static_figures(model, tmp_path, None, make_batch, [1, 4], 7, threads=1, memory=False)
    assert figures["params"] == sum(p.numel() for p in model.parameters())
    assert figures["gflops_batch1"] == pytest.approx(round(2 * 7 * (8 * 16 + 16 * 3) / 1e9, 4))
    assert figures["peak_mem_mb"] is None


def test_measurement_device_is_the_gpu_when_there_is_one():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert bench.measurement_device().type == expected


# ---- run only where there is a GPU (benchmarks/gpu_smoke.sh runs the suite there) -----------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_model_gets_its_batches_on_the_gpu():
    model = TwoLinear().cuda()
    batch = {"input_ids": torch.randint(0, 50, (2, 5))}  # built on the CPU, as task.bench_batch does
    assert bench.forward_gflops(model, batch) > 0
    assert bench.latency_ms(model, batch, repeats=2, warmup=1) > 0
    assert {d.type for d in model.seen_devices} == {"cuda"}


@cuda
def test_cuda_peak_memory_counts_the_measured_model_alone(tiny_classifier_dir):
    from transformers import AutoModelForSequenceClassification

    held = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")  # 512 MiB the caller still holds
    batch = {"input_ids": torch.randint(0, 1000, (4, 16)), "attention_mask": torch.ones(4, 16, dtype=torch.long)}
    peak = bench.peak_memory_mb(tiny_classifier_dir, AutoModelForSequenceClassification, batch, threads=1,
                                device="cuda")
    del held
    weights_mb = sum(f.stat().st_size for f in tiny_classifier_dir.glob("*.safetensors")) / 2**20
    assert peak is not None and weights_mb <= peak < weights_mb + 64, (peak, weights_mb)
