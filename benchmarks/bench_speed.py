"""Speed-up of layer-subset students over the fine-tuned MiniLM-L6 teacher, measured side by side.

Latency depends on the architecture, not on the recipe or the seed, so this script measures it
once per student shape, on a quiet machine, with more repeats than the per-run figures of the
recipe suites: R rounds, each the median of N forward passes per model, the models interleaved
within a round so that machine noise hits both alike. It prints the median speed-up over rounds
and its spread (min-max), and writes benchmarks/results/speed-<task>.json.

    .venv/bin/python benchmarks/bench_speed.py --task sst2 --layers 3 2

The teacher is the cached fine-tuned one (run any suite or `make demo` first); students are
built from it exactly as `student: {num_layers: n}` builds them. Inputs: real eval sentences cut or
extended to the task's median eval length, batch 1 and 32, 2 threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from common import RESULTS, TASKS, experiment

from lmdistill.api import load_teacher, teacher_cache_key
from lmdistill.bench import count_parameters, forward_gflops, latency_ms
from lmdistill.config import load_config
from lmdistill.models.students import layer_subset, uniform_layers
from lmdistill.models.teacher import default_cache_dir, load_model
from lmdistill.tasks import build_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2", choices=sorted(TASKS))
    parser.add_argument("--layers", nargs="+", type=int, default=[3, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = load_config(experiment(args.task, "kd", "L3", 0, output=Path("/tmp/lmdistill-speed")))
    task = build_task(config.task)
    cache = default_cache_dir()
    teacher, tokenizer, source, needs_finetune = load_teacher(config, task, cache, False)
    if needs_finetune:  # the suites' fine-tuned teacher, if cached (the shape, hence the speed, is the same)
        cached = cache / "teachers" / teacher_cache_key(config, task, source)
        if (cached / "config.json").is_file():
            teacher, _ = load_model(task.auto_class(), str(cached), {})
    teacher.eval()
    models = {"teacher": teacher}
    for n in args.layers:
        models[f"L{n}"] = layer_subset(teacher, uniform_layers(n, teacher.config.num_hidden_layers)).eval()
    seq_len = task.typical_length(tokenizer, teacher.config)
    result = {"task": args.task, "seq_len": seq_len, "threads": args.threads, "rounds": args.rounds,
              "repeats": args.repeats, "models": {}}
    for batch_size in (1, 32):
        batch = task.bench_batch(tokenizer, batch_size, seq_len, teacher.config)
        rounds = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():
                rounds[name].append(latency_ms(model, batch, args.repeats if batch_size == 1 else args.repeats // 2, 3))
        for name in models:
            entry = result["models"].setdefault(name, {"params": count_parameters(models[name]),
                                                       "gflops_batch1": round(forward_gflops(
                                                           models[name], task.bench_batch(tokenizer, 1, seq_len)), 4)})
            entry[f"latency_ms_batch{batch_size}"] = round(statistics.median(rounds[name]), 3)
            if name != "teacher":
                ratios = [t / s for t, s in zip(rounds["teacher"], rounds[name])]
                entry[f"speedup_batch{batch_size}"] = {"median": round(statistics.median(ratios), 3),
                                                       "min": round(min(ratios), 3), "max": round(max(ratios), 3)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"speed-{args.task}.json").write_text(json.dumps(result, indent=2))
    print(f"| model | params (M) | GFLOPs b=1 | latency b=1 (ms) | latency b=32 (ms) | speed-up b=1 | speed-up b=32 |")
    print("|---|---|---|---|---|---|---|")
    for name, e in result["models"].items():
        s1 = e.get("speedup_batch1", {"median": 1, "min": 1, "max": 1})
        s32 = e.get("speedup_batch32", {"median": 1, "min": 1, "max": 1})
        print(f"| {name} | {e['params'] / 1e6:.1f} | {e['gflops_batch1']} | {e['latency_ms_batch1']} | "
              f"{e['latency_ms_batch32']} | {s1['median']:.2f} ({s1['min']:.2f}-{s1['max']:.2f}) | "
              f"{s32['median']:.2f} ({s32['min']:.2f}-{s32['max']:.2f}) |")
    print(f"\n{args.task}: seq_len {seq_len}, {args.threads} threads, median of {args.rounds} rounds "
          f"(each a median of {args.repeats} passes at b=1, {args.repeats // 2} at b=32); range in brackets.")


if __name__ == "__main__":
    main()
