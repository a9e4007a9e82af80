"""Per-step cost of the optional training settings: bf16 autocast and torch.compile, against the default.

Workload: the demo's (MiniLM-L6 teacher fine-tuned on SST-2 and cached, 3-layer student [0, 2, 4],
kd with T 4, batch 32, max_length 64), teacher outputs from the warm teacher-output cache, so the
student's step is all that is timed. Each setting runs `--short` and `--long` optimizer steps; the
marginal cost per step, (time(long) - time(short)) / (long - short), leaves out one-off costs such as
compilation, which is reported separately as time(short) - short * per-step: for a first run with a fresh
inductor cache (cold compilation) and for the rounds (inductor's on-disk cache warm). Settings alternate
within each of `--rounds` rounds; the figures are medians over rounds. Accuracy is not the point here
(a few dozen steps), but the final training loss of each setting is printed so a broken setting shows.
Writes benchmarks/results/step-options.json.

    .venv/bin/python benchmarks/bench_step_options.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:  # a fresh compile cache: the first compiled run is a cold one
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="lmdistill-inductor-")

import torch  # noqa: E402

from lmdistill.api import distill  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"default": {}, "bf16": {"bf16": True}, "compile": {"torch_compile": True}}


def config(output: Path, steps: int, extra: dict, teacher: str | None = None) -> dict:
    # After the first run the fine-tuned teacher folder is given directly: the settings under test
    # (bf16 among them) are in the teacher cache key, and would otherwise fine-tune it again under them.
    return {
        "teacher": {"path": teacher, "finetune": "never"} if teacher else
                   {"path": "minilm", "epochs": 3, "learning_rate": 5e-5},
        "student": {"layers": [0, 2, 4]},
        "task": {"kind": "classification", "train": str(REPO / "data/sst2/train.tsv"),
                 "eval": str(REPO / "data/sst2/dev.tsv"), "text": "sentence", "label": "label", "max_length": 64},
        "recipe": {"name": "kd", "temperature": 4.0, "alpha": 0.5},
        "training": {"max_steps": steps, "batch_size": 32, "learning_rate": 1e-4, "seed": 42, "logging_steps": 10,
                     "save_steps": 100000, "num_threads": 2, **extra},
        "bench": {"enabled": False},
        "output": str(output),
    }


def timed_run(steps: int, extra: dict, work: Path, teacher: str | None = None) -> tuple[float, float, str]:
    shutil.rmtree(work, ignore_errors=True)
    result = distill(config(work, steps, extra, teacher))
    stage = result.report["stages"][0]
    folder = result.report["teacher_info"].get("cache_dir") or teacher
    shutil.rmtree(work, ignore_errors=True)
    return stage["train_runtime_s"], stage["train_loss"], folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=20)
    parser.add_argument("--long", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/step-options.json"))
    args = parser.parse_args()
    work = REPO / "runs" / "bench-step-options"
    _, _, teacher = timed_run(2, {}, work)  # the fine-tuned teacher and the warm output cache exist after this
    # One first run per setting before the rounds: with a fresh inductor cache (set below) it pays
    # torch.compile's cold compilation, which is reported on its own; the rounds then see what a second
    # run sees (inductor's on-disk cache warm), so their per-step figures are not mixed with compiling.
    first = {name: timed_run(args.short, SETTINGS[name], work, teacher)[0] for name in args.settings}
    samples = {name: {"short": [], "long": [], "loss": []} for name in args.settings}
    for _ in range(args.rounds):
        for name in args.settings:
            short, _, _ = timed_run(args.short, SETTINGS[name], work, teacher)
            long, loss, _ = timed_run(args.long, SETTINGS[name], work, teacher)
            samples[name]["short"].append(short)
            samples[name]["long"].append(long)
            samples[name]["loss"].append(loss)
    rows = {}
    for name, s in samples.items():
        per_step = [(lg - sh) / (args.long - args.short) for sh, lg in zip(s["short"], s["long"])]
        one_off = [sh - args.short * p for sh, p in zip(s["short"], per_step)]
        rows[name] = {"per_step_s": statistics.median(per_step), "per_step_rounds": per_step,
                      "one_off_s": statistics.median(one_off), "first_run_s": first[name],
                      "first_run_one_off_s": first[name] - args.short * statistics.median(per_step),
                      "train_loss": statistics.median(s["loss"]), "raw": s}
    base = rows.get("default", {}).get("per_step_s")
    result = {"workload": "SST-2, MiniLM-L6 teacher (cached outputs), 3-layer student, kd T 4, batch 32, max_length 64",
              "short": args.short, "long": args.long, "rounds": args.rounds, "threads": 2,
              "device": "cuda" if torch.cuda.is_available() else "cpu", "settings": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("| setting | s / step (median) | vs default | one-off, first run (s) | one-off, later runs (s) | train loss |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        ratio = f"{r['per_step_s'] / base:.2f}x" if base else "n/a"
        print(f"| {name} | {r['per_step_s']:.3f} | {ratio} | {r['first_run_one_off_s']:.1f} | {r['one_off_s']:.1f} | "
              f"{r['train_loss']:.4f} |")


if __name__ == "__main__":
    main()
