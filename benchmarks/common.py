"""Shared benchmark machinery: the task and recipe presets, one run = one lmdistill experiment,
results cached as JSON (so suites share runs and a killed benchmark resumes), and the tables.

Each run writes benchmarks/results/runs/<task>-<recipe>-L<layers>-s<seed><tag>.json holding the
full lmdistill report plus the settings of the run. Tables are built only from those files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RUNS = RESULTS / "runs"

# The real MiniLM-L6 teacher on our real data. Teacher fine-tuning settings are shared by every
# run of a task, so the fine-tuned teacher is trained once and reused from the cache.
TASKS = {
    "sst2": {"kind": "classification", "train": "data/sst2/train.tsv", "eval": "data/sst2/dev.tsv",
             "text": "sentence", "label": "label", "max_length": 64},
    "trec": {"kind": "classification", "train": "data/trec/train.tsv", "eval": "data/trec/test.tsv",
             "text": "question", "label": "label_coarse", "max_length": 32},
    "wikiann": {"kind": "token-classification", "train": "data/wikiann_en/train.txt",
                "eval": "data/wikiann_en/dev.txt", "text": "tokens", "label": "tags", "max_length": 64,
                "max_train_samples": 10000, "max_eval_samples": 2000},
}

RECIPES = {
    "finetune": {"name": "finetune"},
    "kd": {"name": "kd", "temperature": 4.0, "alpha": 0.5},
    "lwd": {"name": "lwd", "temperature": 4.0, "alpha": 0.5, "layer_map": "uniform", "beta": 1.0},
}


def run_key(task: str, recipe: str, layers: int | str, seed: int, tag: str = "") -> str:
    return f"{task}-{recipe}-L{layers}-s{seed}{tag}"


def experiment(task: str, recipe: dict, student: dict, seed: int, epochs: float, max_train: int | None,
               output: Path, batch_size: int = 32, learning_rate: float = 1e-4) -> dict:
    task_cfg = dict(TASKS[task])
    task_cfg["train"] = str(REPO / task_cfg["train"])
    task_cfg["eval"] = str(REPO / task_cfg["eval"])
    if max_train:
        task_cfg["max_train_samples"] = max_train
    return {
        "teacher": {"path": "minilm", "epochs": 2, "learning_rate": 5e-5},
        "student": student,
        "task": task_cfg,
        "recipe": recipe,
        "training": {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
                     "logging_steps": 50, "save_steps": 100000},
        "bench": {"repeats": 10, "warmup": 2, "batch_sizes": [1, 32], "memory": False},
        "output": str(output),
    }


def run(key: str, config: dict, dry_run: bool = False) -> dict | None:
    """Run one experiment unless its result JSON exists; return the stored result."""
    path = RUNS / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    if dry_run:
        print(f"would run {key}")
        return None
    sys.path.insert(0, str(REPO / "src"))
    from lmdistill.api import distill

    start = time.time()
    result = distill(config, overwrite=True)
    record = {"key": key, "wall_s": round(time.time() - start, 1), "config": config, "report": result.report}
    RUNS.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    shutil.rmtree(config["output"], ignore_errors=True)  # keep the disk light; the report is in the JSON
    print(f"{key}: {result.report['student']['metric']}={result.report['student']['score']:.4f} "
          f"retention={result.report['retention']:.4f} ({record['wall_s']} s)", flush=True)
    return record


def mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(records: list[dict], groups: list[tuple[str, str, str]], title: str = "") -> str:
    """Markdown table of mean ± std over seeds. groups: (task, layers label, recipe label) in order;
    records are matched on record['group']."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| task | student | recipe | metric | score (×100) | retention (%) | speed-up b32 | seeds |",
              "|---|---|---|---|---|---|---|---|"]
    teachers_done = set()
    for task, layers, recipe in groups:
        runs = [r for r in records if r["group"] == (task, layers, recipe)]
        if not runs:
            continue
        report = runs[0]["report"]
        if task not in teachers_done:
            teachers_done.add(task)
            t = report["teacher"]
            lines.append(f"| {task} | teacher (MiniLM-L6) | — | {t['metric']} | {t['score'] * 100:.2f} | 100 | 1.00 | — |")
        scores = [r["report"]["student"]["score"] for r in runs]
        ret = [r["report"]["retention"] for r in runs]
        speed = [r["report"]["speedup"].get("batch32") for r in runs]
        lines.append(f"| {task} | {layers} | {recipe} | {report['student']['metric']} | {mean_std(scores, 100)} | "
                     f"{mean_std(ret, 100)} | {mean_std(speed, 1)} | {len(runs)} |")
    return "\n".join(lines)


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tasks", nargs="+", default=["sst2", "trec"])
    parser.add_argument("--layers", nargs="+", type=int, default=[3, 2])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    parser.add_argument("--table-only", action="store_true", help="print the table from stored results")
    return parser
