"""Cost measurements: parameters, size on disk, FLOPs, latency (median over repeats) and peak memory.

Teacher and student are measured by the same function with the same inputs and thread count, on
the device the model sits on (`model_device`): every batch is moved there, and CUDA timings are
synchronised. Peak memory is measured in a fresh process per model, so each model is measured
alone whatever else the caller holds: on CPU the peak RSS (VmHWM) during load + forward minus the
RSS before the load (torch keeps no CPU allocator statistics); on CUDA
`torch.cuda.max_memory_allocated` of that process (weights + activations; the caller's models
are not counted, and its cached blocks are released first so the child has room). An ONNX export
folder (`lmdistill.export.OnnxModel`) is measured the same way, its peak being the process's RSS.
"""

from __future__ import annotations

import gc
import multiprocessing
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm


def model_device(model) -> torch.device:
    """Where the model's weights are (an onnxruntime model says `cpu`)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def measurement_device() -> torch.device:
    """The device models are evaluated and measured on: the GPU when there is one."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def release_memory() -> None:
    """Free what Python no longer references, and return CUDA's cached blocks to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _on(device: torch.device, batch: dict) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def count_parameters(model) -> int:
    if not isinstance(model, torch.nn.Module):
        return model.num_parameters()
    seen, total = set(), 0
    for param in model.parameters():  # tied weights count once
        if param.data_ptr() not in seen:
            seen.add(param.data_ptr())
            total += param.numel()
    return total


def folder_size_mb(folder: str | Path) -> float:
    """Size of the weights on disk: safetensors files, or an ONNX graph and its external data."""
    patterns = ("*.safetensors", "*.onnx", "*.onnx.data")
    return sum(f.stat().st_size for pattern in patterns for f in Path(folder).rglob(pattern)) / 2**20


@torch.inference_mode()
def latency_ms(model, batch: dict, repeats: int, warmup: int) -> float:
    """Median wall time of one forward pass, in milliseconds."""
    model.eval()
    device = model_device(model)
    batch = _on(device, batch)
    for _ in range(warmup):
        model(**batch)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(**batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


@torch.inference_mode()
def forward_gflops(model, batch: dict) -> float | None:
    """GFLOPs of one forward pass on `batch` (moved to the model's device), counted by torch's
    FlopCounterMode; None for a model that torch does not run (an ONNX graph)."""
    if not isinstance(model, torch.nn.Module):
        return None
    counter = FlopCounterMode(display=False)
    with counter:
        model(**_on(model_device(model), batch))
    return counter.get_total_flops() / 1e9


def status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MiB. Unlike ru_maxrss, VmHWM is not
    inherited from the parent across fork/exec."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_child(folder: str, class_name: str, batch: dict, threads: int, device: str, queue) -> None:
    import transformers

    import lmdistill.models.pruning  # noqa: F401  registers the prunable (token-dropping) classes
    from lmdistill.models import efficient  # registers LSG; efficient models need their runtime hooks

    torch.set_num_threads(threads)
    if class_name == "onnx":
        from lmdistill.export import OnnxModel

        before = status_mb("VmRSS")
        OnnxModel(folder, threads)(**batch)
        queue.put(max(status_mb("VmHWM") - before, 0.0))
        return
    auto_class = getattr(transformers, class_name)
    # Import the model's code before the baseline, so only weights and activations are counted.
    config = transformers.AutoConfig.from_pretrained(folder)
    model_class = auto_class._model_mapping[type(config)]
    if device == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
        model = efficient.attach_runtime(model_class.from_pretrained(folder, dtype=torch.float32).to(device).eval())
        with torch.inference_mode():
            model(**_on(torch.device(device), batch))
        torch.cuda.synchronize()
        queue.put(torch.cuda.max_memory_allocated() / 2**20)
        return
    before = status_mb("VmRSS")
    model = efficient.attach_runtime(model_class.from_pretrained(folder, dtype=torch.float32).eval())
    with torch.inference_mode():
        model(**batch)
    peak = status_mb("VmHWM")
    queue.put(max(peak - before, 0.0))


def peak_memory_mb(folder: str | Path, auto_class, batch: dict, threads: int,
                   device: torch.device | str = "cpu") -> float | None:
    """Peak memory of loading the model and one forward pass on `batch`, in MiB, measured in a
    fresh process (see the module docstring). auto_class: an AutoModelFor... class, or "onnx"."""
    device = torch.device(device).type
    release_memory()  # on CUDA: our cached blocks would otherwise leave the child less room
    class_name = auto_class if isinstance(auto_class, str) else auto_class.__name__
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_child, args=(str(folder), class_name, batch, threads, device, queue))
    process.start()
    process.join(timeout=600)
    if process.exitcode != 0:
        return None
    return float(queue.get(timeout=5))


def compare_latency(models: dict, batch_sizes: list[int], seq_len: int, repeats: int, warmup: int,
                    threads: int, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Median latency (ms) of each model at each batch size, measured side by side.

    models: {name: (model, make_batch)} with make_batch(batch_size, seq_len) -> real inputs.
    The models alternate within each of `rounds` rounds, so machine noise hits them alike; a
    model's figure is the median over its rounds of the per-round medians.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = {name: {} for name in models}
        for size in batch_sizes:
            # Fewer repeats at large batch: each is long, and the median settles quickly.
            reps = repeats if size <= 8 else max(3, repeats // 3)
            batches = {name: make_batch(size, seq_len) for name, (_, make_batch) in models.items()}
            samples = {name: [] for name in models}
            for round_index in tqdm(range(rounds), desc=f"latency batch {size}", leave=False):
                for name, (model, _) in models.items():
                    samples[name].append(latency_ms(model, batches[name], reps, warmup if round_index == 0 else 1))
            for name in models:
                result[name][f"batch{size}"] = round(statistics.median(samples[name]), 3)
        return result
    finally:
        torch.set_num_threads(previous)


def static_figures(model, folder, auto_class, make_batch, batch_sizes, seq_len: int, threads: int,
                   memory: bool = True) -> dict:
    """Parameters, size on disk, GFLOPs at batch 1 and peak memory at the largest batch, on the
    model's device. auto_class: the model's AutoModelFor... class, or "onnx" for an ONNX folder."""
    gflops = forward_gflops(model, make_batch(1, seq_len))
    figures = {
        "params": count_parameters(model),
        "size_mb": round(folder_size_mb(folder), 2),
        "gflops_batch1": round(gflops, 4) if gflops is not None else None,
        "peak_mem_mb": None,
    }
    if memory:
        peak = peak_memory_mb(folder, auto_class, make_batch(max(batch_sizes), seq_len), threads,
                              model_device(model))
        figures["peak_mem_mb"] = round(peak, 1) if peak is not None else None
    return figures
