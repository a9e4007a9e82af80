"""FCD benchmark: finetune / kd / lwd / fcd (token-only, sequence-only, both) on SST-2 and TREC.

Teacher: the packaged MiniLM-L6 (`teacher: minilm`, 6 layers, 384 wide, 12 heads), fine-tuned on each
task first by lmdistill and cached (the cache key includes the seed, so each seed has its own teacher,
shared by every recipe of that seed). Students: the teacher's own layers, picked uniformly
(`student: {num_layers: N}`, DistilBERT-style init), N in --layers (default 3 and 2). With --narrow the
students are instead NEW narrow models, 192 wide (12 heads of 16), intermediate 768, N layers,
initialised FROM SCRATCH (random weights): the setting where fcd needs no projection and lwd learns one.

One `lmdistill.api.distill` call per run, output under runs/bench/fcd/<name>/, and one JSON per run in
benchmarks/results/fcd/<name>.json (the report plus the bench settings), where <name> is
`<task>-<recipe>-L<n>-s<seed>` (`-narrow` after L<n> in --narrow mode). A run whose JSON exists is
skipped, so an interrupted benchmark resumes where it stopped. At the end a markdown table gives the
mean +- std over seeds of the task metric, retention (student / teacher) and the batch-32 speed-up
per (task, layers, recipe).

FCD here is OUR reconstruction (see src/lmdistill/recipes/fcd.py): report it as "FCD-style".
The fcd variants differ only in recipe settings: fcd-token (gamma 0), fcd-seq (beta 0), fcd-both.

    .venv/bin/python benchmarks/bench_fcd.py --dry-run
    .venv/bin/python benchmarks/bench_fcd.py --tasks sst2 --layers 3 --seeds 3
    .venv/bin/python benchmarks/bench_fcd.py --narrow --layers 3

Speed-ups are measured per run on whatever the machine is doing at the time; on a shared machine
they are noisy (the std column shows how noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "fcd"
RUNS = REPO / "runs" / "bench" / "fcd"

TASKS = {
    "sst2": {"kind": "classification", "train": "data/sst2/train.tsv", "eval": "data/sst2/dev.tsv",
             "text": "sentence", "label": "label"},
    "trec": {"kind": "classification", "train": "data/trec/train.tsv", "eval": "data/trec/test.tsv",
             "text": "question", "label": "label_coarse"},
}

RECIPES = {
    "finetune": {"name": "finetune"},
    "kd": {"name": "kd", "temperature": 4.0, "alpha": 0.5},
    "lwd": {"name": "lwd", "temperature": 4.0, "alpha": 0.5, "layer_map": "uniform", "beta": 1.0},
    "fcd-token": {"name": "fcd", "temperature": 4.0, "alpha_task": 0.5, "alpha_kd": 0.5, "layer_map": "uniform",
                  "beta": 1.0, "gamma": 0.0},
    "fcd-seq": {"name": "fcd", "temperature": 4.0, "alpha_task": 0.5, "alpha_kd": 0.5, "layer_map": "uniform",
                "beta": 0.0, "gamma": 1.0},
    "fcd-both": {"name": "fcd", "temperature": 4.0, "alpha_task": 0.5, "alpha_kd": 0.5, "layer_map": "uniform",
                 "beta": 1.0, "gamma": 1.0},
}
# `fcd` on the command line means its three forms.
ALIASES = {"fcd": ["fcd-token", "fcd-seq", "fcd-both"]}

NARROW = {"hidden_size": 192, "intermediate_size": 768, "num_attention_heads": 12}  # 12 heads of 16 (MiniLM: 12)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--layers", nargs="+", type=int, default=[3, 2])
    p.add_argument("--recipes", nargs="+", default=["finetune", "kd", "lwd", "fcd"],
                   help=f"any of {', '.join([*RECIPES, *ALIASES])} (fcd = its three forms)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    p.add_argument("--epochs", type=float, default=3.0, help="student training epochs")
    p.add_argument("--teacher-epochs", type=float, default=3.0, help="teacher fine-tuning epochs (cached)")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="student learning rate (default 5e-5 for layer subsets, 2e-4 for --narrow)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--narrow", action="store_true",
                   help="students are new 192-wide models of --layers layers, initialised from scratch")
    p.add_argument("--cache-dir", default=None, help="teacher cache (default $LMDISTILL_CACHE or ~/.cache/lmdistill)")
    p.add_argument("--bench-repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch threads for training and latency")
    p.add_argument("--results", type=Path, default=RESULTS, help="where the per-run JSON files go")
    p.add_argument("--dry-run", action="store_true", help="print the plan only")
    args = p.parse_args(argv)
    recipes = []
    for name in args.recipes:
        for r in ALIASES.get(name, [name]):
            if r not in RECIPES:
                p.error(f"--recipes: unknown recipe '{name}' (choose from {', '.join([*RECIPES, *ALIASES])})")
            if r not in recipes:
                recipes.append(r)
    args.recipes = recipes
    return args


def run_name(task: str, recipe: str, layers: int, seed: int, narrow: bool) -> str:
    return f"{task}-{recipe}-L{layers}{'-narrow' if narrow else ''}-s{seed}"


def build_config(args, task: str, recipe: str, layers: int, seed: int) -> dict:
    spec = TASKS[task]
    if args.narrow:
        student = {"config": {**NARROW, "num_hidden_layers": layers}}
    else:
        student = {"num_layers": layers}
    lr = args.learning_rate or (2e-4 if args.narrow else 5e-5)
    task_cfg = {**spec, "train": str(REPO / spec["train"]), "eval": str(REPO / spec["eval"]),
                "max_length": args.max_length}
    if args.max_train_samples:
        task_cfg["max_train_samples"] = args.max_train_samples
    if args.max_eval_samples:
        task_cfg["max_eval_samples"] = args.max_eval_samples
    config = {
        "teacher": {"path": "minilm", "epochs": args.teacher_epochs, "learning_rate": 5e-5},
        "student": student,
        "task": task_cfg,
        "recipe": dict(RECIPES[recipe]),
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": lr, "seed": seed,
                     "logging_steps": 50, "save_steps": 1000, "save_total_limit": 1,
                     "num_threads": args.threads},
        "bench": {"batch_sizes": [1, 32], "repeats": args.bench_repeats, "warmup": 2, "memory": False,
                  "num_threads": args.threads},
        "output": str(RUNS / run_name(task, recipe, layers, seed, args.narrow)),
    }
    if args.cache_dir:
        config["cache_dir"] = args.cache_dir
    return config


def plan(args) -> list[tuple[str, str, int, int]]:
    return [(task, layers, recipe, seed) for task in args.tasks for layers in args.layers
            for recipe in args.recipes for seed in range(args.seeds)]


def run_one(args, task, layers, recipe, seed) -> Path:
    from lmdistill.api import distill

    name = run_name(task, recipe, layers, seed, args.narrow)
    path = args.results / f"{name}.json"
    if path.is_file():
        print(f"[skip] {name}: {path.relative_to(REPO) if path.is_relative_to(REPO) else path} exists", flush=True)
        return path
    config = build_config(args, task, recipe, layers, seed)
    print(f"[run ] {name}", flush=True)
    start = time.time()
    result = distill(config, resume=True)
    record = {
        "name": name,
        "settings": {"task": task, "recipe": recipe, "layers": layers, "seed": seed, "narrow": args.narrow,
                     "student_init": "from scratch (random)" if args.narrow else "teacher layers (uniform)",
                     "config": config},
        "wall_s": round(time.time() - start, 1),
        "report": result.report,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)
    report = result.report
    print(f"[done] {name}: {report['student']['metric']} {report['student']['score']:.4f}, "
          f"retention {report['retention']:.4f}, speed-up b32 {report['speedup'].get('batch32', float('nan'))}",
          flush=True)
    return path


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f}"


def summary_table(args) -> str:
    rows = []
    for task in args.tasks:
        for layers in args.layers:
            for recipe in args.recipes:
                records = []
                for seed in range(args.seeds):
                    path = args.results / f"{run_name(task, recipe, layers, seed, args.narrow)}.json"
                    if path.is_file():
                        records.append(json.loads(path.read_text())["report"])
                if not records:
                    continue
                metric = records[0]["student"]["metric"]
                rows.append([
                    task, f"{layers}{' (narrow)' if args.narrow else ''}", recipe, str(len(records)),
                    f"{metric}: {mean_std([r['student']['score'] for r in records])}",
                    mean_std([r["teacher"]["score"] for r in records]),
                    mean_std([r["retention"] for r in records]),
                    mean_std([r.get("speedup", {}).get("batch32") for r in records]),
                ])
    header = ["task", "layers", "recipe", "seeds", "student metric", "teacher", "retention", "speed-up b32"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = plan(args)
    init = ("NEW 192-wide students (12 heads of 16, intermediate 768) initialised FROM SCRATCH"
            if args.narrow else "students keep uniformly picked teacher layers (teacher weights)")
    print(f"FCD benchmark: {len(runs)} runs; teacher MiniLM-L6 (384 wide); {init}.")
    print("fcd is our FCD-style reconstruction (see src/lmdistill/recipes/fcd.py).")
    from lmdistill.config import parse_config
    from lmdistill.errors import ConfigError

    try:  # every config is checked before the first (hours-long) run starts
        for task, layers, recipe, seed in runs:
            parse_config(build_config(args, task, recipe, layers, seed))
    except ConfigError as err:
        print(f"config error ({run_name(task, recipe, layers, seed, args.narrow)}): {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for task, layers, recipe, seed in runs:
            name = run_name(task, recipe, layers, seed, args.narrow)
            done = (args.results / f"{name}.json").is_file()
            settings = {k: v for k, v in RECIPES[recipe].items()}
            print(f"  {'done' if done else 'todo'}  {name:<34} student {build_config(args, task, recipe, layers, seed)['student']}"
                  f"  recipe {settings}")
        return 0
    failures = []
    for task, layers, recipe, seed in runs:
        try:
            run_one(args, task, layers, recipe, seed)
        except Exception as err:  # keep going: one failed run should not stop an hours-long benchmark
            name = run_name(task, recipe, layers, seed, args.narrow)
            print(f"[fail] {name}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            failures.append(name)
    print()
    print(f"## FCD benchmark ({'narrow students, from scratch' if args.narrow else 'layer-subset students'}; "
          f"mean ± std over seeds)\n")
    print(summary_table(args))
    if failures:
        print(f"\n{len(failures)} runs failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
