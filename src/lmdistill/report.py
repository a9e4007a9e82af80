"""report.json, report.md and tradeoff.png for one experiment (teacher and student side by side)."""

from __future__ import annotations

from pathlib import Path

from lmdistill import killpoint
from lmdistill.io_utils import atomic_write_json, atomic_write_text


def retention(student_score: float, teacher_score: float, higher_is_better: bool = True) -> float:
    """Student quality as a fraction of the teacher's (perplexity: teacher / student)."""
    if higher_is_better:
        return student_score / teacher_score if teacher_score else float("nan")
    return teacher_score / student_score if student_score else float("nan")


def speedups(teacher: dict, student: dict) -> dict[str, float]:
    out = {}
    for key, t in teacher.get("latency_ms", {}).items():
        s = student.get("latency_ms", {}).get(key)
        if s:
            out[key] = round(t / s, 3)
    return out


def _fmt(value, digits=4):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def entries_table(entries: dict[str, dict]) -> str:
    """One markdown row per model: metric, size, FLOPs, latency per batch size, peak memory."""
    first = next(iter(entries.values()))
    sizes = list(first.get("latency_ms", {}))
    header = ["model", first["metric"], "params (M)", "size (MB)", "GFLOPs (b=1)"]
    header += [f"latency {k} (ms)" for k in sizes] + ["peak mem (MB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for role, entry in entries.items():
        row = [
            role,
            f"{entry['score']:.4f}",
            f"{entry['params'] / 1e6:.2f}",
            _fmt(entry.get("size_mb")),
            _fmt(entry.get("gflops_batch1")),
        ]
        row += [_fmt(entry.get("latency_ms", {}).get(k)) for k in sizes]
        row += [_fmt(entry.get("peak_mem_mb"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def markdown_table(report: dict) -> str:
    speed = ", ".join(f"{k}: {v:.2f}x" for k, v in report.get("speedup", {}).items())
    table = entries_table({"teacher": report["teacher"], "student": report["student"]})
    lines = [table, "", f"retention: {report['retention']:.4f}   speed-up: {speed or 'n/a'}"]
    return "\n".join(lines + pruning_table(report["student"]))


def pruning_table(entry: dict) -> list[str]:
    """Rows for a prunable student's keep ratios and searched length configurations (lmdistill.length_eval)."""
    rows = [(f"keep ratio {e['keep_ratio']:g}", e) for e in entry.get("pruning", [])]
    rows += [(f"lengths {e['length_config']}", e) for e in entry.get("length_search", [])]
    if not rows:
        return []
    sizes = list(rows[0][1].get("latency_ms", {}))
    header = ["student at", entry["metric"], "GFLOPs (b=1)", "lengths at seq_len"] + [f"latency {k} (ms)" for k in sizes]
    lines = ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, e in rows:
        row = [label, f"{e['score']:.4f}", _fmt(e.get("gflops_batch1")), str(e.get("lengths"))]
        lines.append("| " + " | ".join(row + [_fmt(e.get("latency_ms", {}).get(k)) for k in sizes]) + " |")
    return lines


def write_report(report: dict, output: Path) -> dict[str, Path]:
    """Write the three report files, each atomically, report.json last; return their paths."""
    output.mkdir(parents=True, exist_ok=True)
    paths = {"json": output / "report.json", "md": output / "report.md", "png": output / "tradeoff.png"}
    title = f"# lmdistill report: {report['recipe']} on {report['task']}\n\n"
    details = (
        f"\n\nStudent: {report.get('student_description', '')}. Latency: median of repeated forward passes at "
        f"sequence length {report.get('bench', {}).get('seq_len')} with {report.get('bench', {}).get('threads')} "
        "threads, same inputs for both models.\n"
    )
    if report.get("cost_vs_length"):  # efficient-attention students (lmdistill/cost.py, cost_vs_length.png)
        from lmdistill.cost import markdown as cost_markdown

        details += ("\n## Cost against sequence length (batch 1)\n\n"
                    + cost_markdown(report["cost_vs_length"], "full-attention student (eager)") + "\n")
    atomic_write_text(paths["md"], title + markdown_table(report) + details)
    killpoint.hit("report")
    curve = report["student"].get("pruning", []) + report["student"].get("length_search", [])
    plot_tradeoff([("teacher", report["teacher"]), ("student", report["student"])], paths["png"],
                  title=f"{report['recipe']} on {report['task']}",
                  lines=[("student at keep ratios / searched lengths", curve)] if curve else None)
    killpoint.hit("report")
    atomic_write_json(paths["json"], report)  # last: a report.json means the run has finished
    return paths


def plot_tradeoff(points: list[tuple[str, dict]], path: Path, title: str = "", latency_key: str | None = None,
                  lines: list[tuple[str, list[dict]]] | None = None) -> None:
    """Metric against latency, one labelled point per model; `lines`: (label, entries with score and
    latency_ms) drawn as one line each, sorted by latency (e.g. a prunable student at its keep ratios)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if latency_key is None:
        keys = list(points[0][1].get("latency_ms", {}))
        latency_key = keys[-1] if keys else None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, entry in points:
        x = entry.get("latency_ms", {}).get(latency_key)
        if x is None:
            continue
        ax.scatter([x], [entry["score"]], s=60)
        ax.annotate(f"{label} ({entry['params'] / 1e6:.1f}M)", (x, entry["score"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=9)
    for label, entries in lines or []:
        xy = sorted((e["latency_ms"][latency_key], e["score"]) for e in entries if latency_key in e.get("latency_ms", {}))
        if xy:
            ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", markersize=4, label=label)
    if lines:
        ax.legend(fontsize=8)
    ax.margins(x=0.3, y=0.25)  # room for the labels
    ax.set_xlabel(f"latency at {latency_key} (ms, median)")
    ax.set_ylabel(points[0][1]["metric"])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)
