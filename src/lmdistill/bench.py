"""Cost measurements: parameters, size on disk, FLOPs, latency (median over repeats) and peak memory.

Teacher and student are measured by the same function with the same inputs and thread count.
Peak memory on CPU is measured in a fresh process per model (peak RSS, VmHWM, during load + forward,
minus the RSS of the process before the model was loaded), because torch keeps no CPU allocator
statistics; on CUDA it is `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm


def count_parameters(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for param in model.parameters():  # tied weights count once
        if param.data_ptr() not in seen:
            seen.add(param.data_ptr())
            total += param.numel()
    return total


def folder_size_mb(folder: str | Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*.safetensors")) / 2**20


@torch.inference_mode()
def latency_ms(model, batch: dict, repeats: int, warmup: int) -> float:
    """Median wall time of one forward pass, in milliseconds."""
    model.eval()
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
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
def forward_gflops(model, batch: dict) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        model(**batch)
    return counter.get_total_flops() / 1e9


def _status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MiB. Unlike ru_maxrss, VmHWM is not
    inherited from the parent across fork/exec."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_child(folder: str, class_name: str, batch: dict, threads: int, queue) -> None:
    import transformers

    from lmdistill.models import efficient  # registers LSG; efficient models need their runtime hooks

    torch.set_num_threads(threads)
    auto_class = getattr(transformers, class_name)
    # Import the model's code before the baseline, so only weights and activations are counted.
    config = transformers.AutoConfig.from_pretrained(folder)
    model_class = auto_class._model_mapping[type(config)]
    before = _status_mb("VmRSS")
    model = efficient.attach_runtime(model_class.from_pretrained(folder, dtype=torch.float32).eval())
    with torch.inference_mode():
        model(**batch)
    peak = _status_mb("VmHWM")
    queue.put(max(peak - before, 0.0))


def peak_memory_mb(folder: str | Path, auto_class, batch: dict, threads: int) -> float | None:
    """Peak memory of loading the model and one forward pass on `batch`, in MiB."""
    if torch.cuda.is_available():
        from lmdistill.models import efficient

        model = efficient.attach_runtime(auto_class.from_pretrained(str(folder), dtype=torch.float32).cuda().eval())
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            model(**{k: v.cuda() for k, v in batch.items()})
        return torch.cuda.max_memory_allocated() / 2**20
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_child, args=(str(folder), auto_class.__name__, batch, threads, queue))
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
    """Parameters, size on disk, GFLOPs at batch 1 and peak memory at the largest batch."""
    figures = {
        "params": count_parameters(model),
        "size_mb": round(folder_size_mb(folder), 2),
        "gflops_batch1": round(forward_gflops(model, make_batch(1, seq_len)), 4),
        "peak_mem_mb": None,
    }
    if memory:
        peak = peak_memory_mb(folder, auto_class, make_batch(max(batch_sizes), seq_len), threads)
        figures["peak_mem_mb"] = round(peak, 1) if peak is not None else None
    return figures
