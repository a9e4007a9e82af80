"""Benchmark TED against finetune, kd and lwd with the real MiniLM-L6 teacher.

Runs every (task, student layers, recipe, seed) through `lmdistill.api.distill` and writes one JSON
per run to benchmarks/results/ted/<task>-<recipe>-L<n>-s<seed>.json (the report and the settings).
A run whose JSON exists is skipped, so an interrupted benchmark continues where it stopped. At the
end it prints a markdown table of mean +- std (over seeds) of the task metric and the retention
(student / teacher) for each (task, layers, recipe).

Tasks: sst2 (data/sst2 train/dev, accuracy), trec (data/trec train/test, coarse labels, accuracy),
wikiann (data/wikiann_en train/dev, first 10k/2k sentences, NER entity F1). Students keep N of the
teacher's 6 layers, picked uniformly (`student: {num_layers: N}`), initialised from the fine-tuned
teacher. The teacher is fine-tuned once per task (cached) and shared by every run of that task.

Recipes use their defaults (kd: T=4, alpha=0.5; lwd: uniform map, beta=1; ted: see
lmdistill.recipes.ted) unless an option below changes ted. A ted variant gets its own name in the
file (e.g. `ted-amse100`, `ted-fi2-nl`), so a sweep never collides with the default runs:

    python benchmarks/bench_ted.py --dry-run                      # the plan, and the table so far
    python benchmarks/bench_ted.py --tasks sst2 --layers 3 --seeds 3
    python benchmarks/bench_ted.py --recipes ted --alpha-mse 5 10 20 100 --tasks sst2

On 2 CPU cores the full grid (3 tasks x 2 sizes x 4 recipes x 3 seeds) takes hours.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
RESULTS = REPO / "benchmarks" / "results" / "ted"

# Same data settings as benchmarks/common.py, so results are comparable across suites. WikiANN is
# capped (10k train / 2k dev sentences) to keep CPU runs bearable; --max-*-samples override the caps.
TASKS = {
    "sst2": {"kind": "classification", "train": DATA / "sst2" / "train.tsv", "eval": DATA / "sst2" / "dev.tsv",
             "text": "sentence", "label": "label", "max_length": 64},
    "trec": {"kind": "classification", "train": DATA / "trec" / "train.tsv", "eval": DATA / "trec" / "test.tsv",
             "text": "question", "label": "label_coarse", "max_length": 32},
    "wikiann": {"kind": "token-classification", "train": DATA / "wikiann_en" / "train.txt",
                "eval": DATA / "wikiann_en" / "dev.txt", "format": "conll", "text": "tokens", "label": "tags",
                "max_length": 64, "max_train_samples": 10000, "max_eval_samples": 2000},
}
RECIPES = ("finetune", "kd", "lwd", "ted")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(TASKS))
    p.add_argument("--layers", nargs="+", type=int, default=[3, 2], help="student sizes (of the teacher's 6)")
    p.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0 .. N-1)")
    p.add_argument("--epochs", type=float, default=3.0, help="training.epochs of every stage")
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--alpha-mse", nargs="+", type=float, default=None,
                   help="ted: one run per value (a sweep); default: the recipe's default")
    p.add_argument("--filter-interval", type=int, default=None,
                   help="ted: student_filter_interval (the teacher's interval follows to match the count)")
    p.add_argument("--nonlinear", action="store_true", help="ted: Linear-activation-Linear filters")
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch threads for training and latency")
    p.add_argument("--results", type=Path, default=RESULTS, help="where the per-run JSON files go")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="run folders (students, checkpoints), each deleted after its run unless --keep-runs; "
                        "default: <cache dir>/bench-ted")
    p.add_argument("--keep-runs", action="store_true", help="keep each run's folder (student, stages)")
    p.add_argument("--cache-dir", default=None, help="teacher cache (default: $LMDISTILL_CACHE or ~/.cache/lmdistill)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the table of existing results")
    return p.parse_args(argv)


def ted_variants(args) -> list[tuple[str, dict]]:
    """(name, recipe settings) for every ted variant asked for."""
    suffix, base = "", {"name": "ted"}
    if args.filter_interval:
        suffix += f"-fi{args.filter_interval}"
        base["student_filter_interval"] = args.filter_interval
    if args.nonlinear:
        suffix += "-nl"
        base["filter_nonlinear"] = True
    if not args.alpha_mse:
        return [(f"ted{suffix}", base)]
    return [(f"ted-amse{value:g}{suffix}", {**base, "alpha_mse": value}) for value in args.alpha_mse]


def plan(args) -> list[dict]:
    recipes: list[tuple[str, dict]] = []
    for recipe in args.recipes:
        recipes += ted_variants(args) if recipe == "ted" else [(recipe, {"name": recipe})]
    runs = []
    for task in args.tasks:
        for layers in args.layers:
            for tag, settings in recipes:
                for seed in range(args.seeds):
                    name = f"{task}-{tag}-L{layers}-s{seed}"
                    runs.append({"name": name, "task": task, "recipe": tag, "layers": layers, "seed": seed,
                                 "config": experiment_config(args, task, layers, settings, seed, name)})
    return runs


def experiment_config(args, task: str, layers: int, recipe: dict, seed: int, name: str) -> dict:
    from lmdistill.models.teacher import default_cache_dir

    task_cfg = {k: str(v) if isinstance(v, Path) else v for k, v in TASKS[task].items()}
    if args.max_train_samples:
        task_cfg["max_train_samples"] = args.max_train_samples
    if args.max_eval_samples:
        task_cfg["max_eval_samples"] = args.max_eval_samples
    work = args.work_dir or default_cache_dir(args.cache_dir) / "bench-ted"
    training = {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                "seed": seed, "logging_steps": 50}
    bench = {"batch_sizes": [1, 32], "repeats": 5, "warmup": 2, "memory": False}
    if args.threads:
        training["num_threads"] = args.threads
        bench["num_threads"] = args.threads
    config = {"teacher": {"path": "minilm"}, "student": {"num_layers": layers}, "task": task_cfg, "recipe": recipe,
              "training": training, "bench": bench, "output": str(work / name)}
    if args.cache_dir:
        config["cache_dir"] = args.cache_dir
    return config


def run_one(run: dict, args) -> dict:
    from lmdistill.api import distill
    from lmdistill.config import config_to_dict, load_config

    output = Path(run["config"]["output"])
    # An interrupted run with the same settings continues from its finished stages and checkpoints;
    # a leftover folder with other settings is replaced.
    config = load_config(run["config"])
    try:
        same = json.loads((output / "config.json").read_text()) == config_to_dict(config)
    except (OSError, json.JSONDecodeError):
        same = False
    start = time.time()
    result = distill(config, resume=same, overwrite=not same)
    record = {key: run[key] for key in ("name", "task", "recipe", "layers", "seed")}
    record.update({"settings": run["config"], "wall_s": round(time.time() - start, 1), "report": result.report})
    path = args.results / f"{run['name']}.json"
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)
    if not args.keep_runs:
        shutil.rmtree(output, ignore_errors=True)
    return record


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f}"


def table(results_dir: Path, tasks=None, layers=None, recipes=None) -> str:
    """Markdown table of every result JSON in `results_dir` (optionally filtered)."""
    groups: dict[tuple, list[dict]] = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if tasks and record["task"] not in tasks or layers and record["layers"] not in layers:
            continue
        if recipes and record["recipe"].split("-")[0] not in recipes:
            continue
        groups.setdefault((record["task"], record["layers"], record["recipe"]), []).append(record)
    lines = ["| task | layers | recipe | metric | teacher | student (mean ± std) | retention (mean ± std) | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    order = {name: i for i, name in enumerate(RECIPES)}
    for (task, n, recipe), records in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1],
                                                                          order.get(kv[0][2].split("-")[0], 9),
                                                                          kv[0][2])):
        reports = [r["report"] for r in records]
        teacher = statistics.fmean(r["teacher"]["score"] for r in reports)
        lines.append(
            f"| {task} | {n} | {recipe} | {reports[0]['student']['metric']} | {teacher:.4f} | "
            f"{_mean_std([r['student']['score'] for r in reports])} | {_mean_std([r['retention'] for r in reports])} "
            f"| {len(records)} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    runs = plan(args)
    todo = [run for run in runs if not (args.results / f"{run['name']}.json").is_file()]
    failed: list[tuple[str, str]] = []
    print(f"{len(runs)} runs planned, {len(runs) - len(todo)} done, {len(todo)} to run (results: {args.results})")
    if args.dry_run:
        for run in runs:
            state = "todo" if run in todo else "done"
            recipe = {k: v for k, v in run["config"]["recipe"].items() if k != "name"}
            print(f"  [{state}] {run['name']}: student {run['layers']} layers, recipe {run['recipe']} {recipe or ''}")
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        for i, run in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {run['name']}", flush=True)
            try:
                record = run_one(run, args)
            except Exception as err:  # keep going; report at the end
                failed.append((run["name"], f"{type(err).__name__}: {err}"))
                print(f"  FAILED: {failed[-1][1]}", flush=True)
                continue
            report = record["report"]
            print(f"  {report['student']['metric']} {report['student']['score']:.4f} "
                  f"(teacher {report['teacher']['score']:.4f}, retention {report['retention']:.4f}) "
                  f"in {record['wall_s']:.0f}s", flush=True)
        if failed:
            print("\nfailed runs:\n" + "\n".join(f"  {name}: {why}" for name, why in failed))
    tags = {run["recipe"] for run in runs}
    print()
    print(table(args.results, set(args.tasks), set(args.layers), {t.split("-")[0] for t in tags}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
