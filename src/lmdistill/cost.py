"""Cost against sequence length: latency and peak memory of one forward pass at each length.

What the efficient-attention report measures (`cost_vs_length.{json,md,png}`): the teacher with full
attention (SDPA, the fastest kernel transformers offers here, and eager for reference), the
full-attention model of the student's depth, and the efficient student, at lengths such as 512,
1,024, 2,048 and 4,096 tokens, batch 1, on the same real token ids. A 512-position teacher has its
positions extended by copying (as the students' are): the cost of its attention is the point, not
its quality.

Latency: the models alternate within each of `rounds` rounds (machine noise hits them alike); a
figure is the median over rounds of the median of `repeats` passes. Peak memory: in a fresh process
per model, the peak resident memory of the forward pass above the memory held just before it
(the high-water mark is reset before each length, lengths run in increasing order, and large
blocks are returned to the system when freed), so weights are not counted; on CUDA,
`max_memory_allocated` above the memory allocated before the pass.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmdistill.bench import latency_ms, status_mb
from lmdistill.io_utils import atomic_write_json, atomic_write_text


@dataclass
class CostModel:
    name: str  # e.g. "teacher, full (sdpa)"
    model: nn.Module
    attn: str | None = None  # "sdpa" / "eager" for full-attention BERTs; None: the model's own attention


def set_length(model: nn.Module, length: int) -> None:
    """Nystromformer reads exactly `segment_means_seq_len` tokens: make that `length`."""
    config = model.config
    if getattr(config, "model_type", "") == "nystromformer" and config.num_landmarks != config.segment_means_seq_len:
        config.segment_means_seq_len = length
        for module in model.modules():
            if hasattr(module, "num_landmarks") and hasattr(module, "seq_len"):
                module.seq_len = length


def note(model: nn.Module, length: int) -> str:
    """What the model really computes at this length, where it differs from its name."""
    config = model.config
    if getattr(config, "model_type", "") == "big_bird":
        smallest = (5 + 2 * config.num_random_blocks) * config.block_size
        if length <= smallest:
            return f"full attention (BigBird falls back below {smallest + 1} tokens)"
    return ""


def measure(models: list[CostModel], lengths: list[int], make_batch, threads: int, repeats: int = 3,
            rounds: int = 3, memory: bool = True, workdir: Path | None = None) -> list[dict]:
    """Rows of {model, length, latency_ms, peak_mem_mb, note}. make_batch(length) -> {input_ids, attention_mask}."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for length in sorted(lengths):
            batch = make_batch(length)
            samples = {m.name: [] for m in models}
            for round_index in range(rounds):
                for entry in models:
                    _prepare(entry, length)
                    samples[entry.name].append(latency_ms(entry.model, batch, repeats, 1 if round_index == 0 else 0))
            for entry in models:
                rows.append({"model": entry.name, "length": length,
                             "latency_ms": round(statistics.median(samples[entry.name]), 2),
                             "peak_mem_mb": None, "note": note(entry.model, length)})
    finally:
        torch.set_num_threads(previous)
    if memory:
        peaks = _peak_memory(models, lengths, make_batch, threads, workdir)
        for row in rows:
            row["peak_mem_mb"] = peaks.get((row["model"], row["length"]))
    return rows


def _prepare(entry: CostModel, length: int) -> None:
    if entry.attn:
        entry.model.set_attn_implementation(entry.attn)
    set_length(entry.model, length)
    entry.model.eval()


def _peak_memory(models, lengths, make_batch, threads, workdir) -> dict[tuple[str, int], float | None]:
    batches = {length: make_batch(length) for length in sorted(lengths)}
    peaks = {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for index, entry in enumerate(models):
            folder = Path(tmp) / str(index)
            entry.model.save_pretrained(folder)
            if torch.cuda.is_available():
                result = _peak_cuda(entry, batches)
            else:
                result = _in_child(str(folder), entry.attn, batches, threads)
            for length, value in (result or {}).items():
                peaks[(entry.name, length)] = value
    return peaks


def _peak_cuda(entry: CostModel, batches) -> dict[int, float]:
    model = entry.model.cuda()
    out = {}
    for length, batch in batches.items():
        _prepare(entry, length)
        batch = {k: v.cuda() for k, v in batch.items()}
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            model(**batch)
        torch.cuda.synchronize()
        out[length] = round((torch.cuda.max_memory_allocated() - before) / 2**20, 1)
    entry.model.cpu()
    return out


def _child(folder: str, attn: str | None, batches: dict, threads: int, queue) -> None:
    import transformers

    from lmdistill.models import efficient  # registers LSG; attaches the runtime hooks

    torch.set_num_threads(threads)
    config = transformers.AutoConfig.from_pretrained(folder)
    head = next((h for h in ("TokenClassification", "QuestionAnswering", "SequenceClassification", "MaskedLM")
                 if h in (config.architectures or [""])[0]), "")
    auto = getattr(transformers, f"AutoModelFor{head}" if head else "AutoModel")
    kwargs = {"attn_implementation": attn} if attn else {}
    model = efficient.attach_runtime(auto.from_pretrained(folder, dtype=torch.float32, **kwargs).eval())
    out = {}
    with torch.inference_mode():
        first = min(batches)
        set_length(model, first)
        model(**batches[first])  # warm up thread pools and kernels
        for length, batch in sorted(batches.items()):
            set_length(model, length)
            before = status_mb("VmRSS")
            with open("/proc/self/clear_refs", "w") as handle:  # reset the high-water mark (VmHWM)
                handle.write("5")
            model(**batch)
            out[length] = round(max(status_mb("VmHWM") - before, 0.0), 1)
    queue.put(out)


def _in_child(folder: str, attn, batches, threads) -> dict[int, float] | None:
    # Large blocks from mmap, returned to the system on free, so the next length starts clean.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(folder, attn, batches, threads, queue))
    process.start()
    process.join(timeout=1800)
    os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
    if process.exitcode != 0:
        return None
    return queue.get(timeout=5)


# ---- report -------------------------------------------------------------------------------------------
def markdown(rows: list[dict], reference: str | None = None) -> str:
    """Latency and peak memory per model (rows) and length (columns); with `reference`, the ratio
    reference / model at the longest length."""
    lengths = sorted({r["length"] for r in rows})
    names = list(dict.fromkeys(r["model"] for r in rows))
    cell = {(r["model"], r["length"]): r for r in rows}
    header = ["model"] + [f"{n} tok: ms" for n in lengths] + [f"{n} tok: MB" for n in lengths]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        values = [cell[(name, n)]["latency_ms"] for n in lengths] + [cell[(name, n)]["peak_mem_mb"] for n in lengths]
        lines.append("| " + " | ".join([name] + ["n/a" if v is None else f"{v:g}" for v in values]) + " |")
    notes = sorted({f"{r['model']} at {r['length']}: {r['note']}" for r in rows if r.get("note")})
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    if reference:
        lines += ["", ratios(rows, reference)]
    return "\n".join(lines)


def ratios(rows: list[dict], reference: str) -> str:
    """`reference` / model for latency and memory at the longest length, one line."""
    longest = max(r["length"] for r in rows)
    ref = next(r for r in rows if r["model"] == reference and r["length"] == longest)
    parts = []
    for r in rows:
        if r["length"] != longest or r["model"] == reference:
            continue
        speed = ref["latency_ms"] / r["latency_ms"] if r["latency_ms"] else None
        mem = ref["peak_mem_mb"] / r["peak_mem_mb"] if r["peak_mem_mb"] and ref["peak_mem_mb"] else None
        parts.append(f"{r['model']}: {speed:.2f}x faster" + (f", {mem:.2f}x less memory" if mem else ""))
    return f"At {longest} tokens, against {reference}: " + "; ".join(parts) + "."


def plot(rows: list[dict], path: Path, title: str = "") -> None:
    """Latency and peak memory against length, log-log, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = sorted((r for r in rows if r["model"] == name), key=lambda r: r["length"])
        style = "--" if "eager" in name else "-"
        for ax, key in zip(axes, ("latency_ms", "peak_mem_mb")):
            points = [(r["length"], r[key]) for r in mine if r[key] is not None]
            if points:
                ax.plot(*zip(*points), style, marker="o", label=name)
    for ax, label in zip(axes, ("latency (ms, batch 1)", "peak memory of the forward pass (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)


def write(rows: list[dict], folder: Path, reference: str | None = None, title: str = "") -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "cost_vs_length.json", "md": folder / "cost_vs_length.md",
             "png": folder / "cost_vs_length.png"}
    atomic_write_json(paths["json"], rows)
    atomic_write_text(paths["md"], markdown(rows, reference) + "\n")
    plot(rows, paths["png"], title)
    return paths
