"""LAD suite: one student, many speeds. Accuracy and measured latency at keep ratios 1.0, 0.8, 0.6,
0.4, 0.3 and at searched per-layer length configurations, for 3-layer students cut from MiniLM-L6.

Models (all 3 layers [0, 2, 4] of the 6-layer MiniLM-L6 teacher, 12 heads; same task epochs for all):
  lad         LAD: a general student (the pretrained teacher's layers, stage 1 on raw text from the
              pretrained teacher, made once: `general-<key>`), then LAD's task stage (pruned student,
              [CLS] InfoNCE + prediction KD) from the fine-tuned teacher
  lad-task    LAD's task stage only, from the student cut from the fine-tuned teacher (no stage 1):
              separates what the task stage does from what stage 1 does
  kd          the protocol's kd student (T 4, alpha 0.5), pruned only at inference (post-hoc)
  lengthdrop  kd with LAT's LengthDrop (sandwich of 2 + the smallest, bound 0.2, inplace distillation)

Protocol: benchmarks/common.py (teacher fine-tuned once per task and cached; students at lr 1e-4,
batch 32, max_length 64 SST-2 / 32 TREC); --epochs task epochs (default 1). Every student is scored at
each keep ratio on the eval set (examples grouped by exact length, no padding: lmdistill.length_eval),
its GFLOPs counted at batch 1, and its latency measured at batch 1 and 32 side by side with its other
configurations, at the task's median eval length and at 128 tokens (real eval text); a LAT-style
evolutionary search (scored on 1000 training examples, so the eval set is not selected on) adds
per-layer length configurations on the Pareto front of score vs GFLOPs.

Results: benchmarks/results/lad/<key>.json = {"key", "wall_s", "config", "report"}; keys
<task>-<model>-L3-s<seed>[-e<E>] and general-L3-tok<N>[-lr<LR>] for the shared general student
(whose folder stays in runs/bench/ for the task runs). Stored runs are skipped.

    .venv/bin/python benchmarks/bench_lad.py --dry-run
    .venv/bin/python benchmarks/bench_lad.py --tasks sst2 trec --seeds 1           # run what is missing
    .venv/bin/python benchmarks/bench_lad.py --seeds 0 1 2 --search-seeds 0 --table-only --markdown benchmarks/results/lad.md --plot
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import common

RESULTS = common.RESULTS / "lad"
MODELS = ["lad", "lad-task", "kd", "lengthdrop"]
KEEP_RATIOS = [1.0, 0.8, 0.6, 0.4, 0.3]
LONG = 128
GENERAL_TOKENS = 200_000
SEARCH = {"iterations": 3, "population": 8, "mutations": 6, "crossovers": 4, "samples": 400, "report": 4}
LAD = {"name": "lad", "tau": 0.07, "sentence_queue_size": 4096, "alpha_cls": 1.0, "alpha_pred": 1.0,
       "pred_temperature": 1.0, "alpha_task": 0.0}
LENGTHDROP = {"name": "lengthdrop", "temperature": 4.0, "alpha": 0.5, "num_sandwich": 2, "length_drop_ratio_bound": 0.2}


GENERAL_LR = 2e-4


def general_key(tokens: int, lr: float) -> str:
    return f"general-L3-tok{tokens}" + (f"-lr{lr:g}" if lr != GENERAL_LR else "")


def general_config(args) -> dict:
    """The shared general student: lad with task_stage false (the task and its teacher only carry the run)."""
    key = general_key(args.general_tokens, args.general_lr)
    config = common.experiment("sst2", "kd", "L3", 0, options(args), common.WORK / key)
    config["student"] = {"layers": [0, 2, 4], "init_from": "pretrained"}
    config["recipe"] = {**LAD, "corpus": [str(common.books_folder(args.books, "bench_lad") / "*.txt")], "max_corpus_tokens": args.general_tokens,
                        "block_size": 128, "token_queue_size": 4096, "general_epochs": 1.0,
                        "general_learning_rate": args.general_lr, "task_stage": False}
    config["bench"] = {**config["bench"], "enabled": False}
    return config


def task_config(task: str, model: str, seed: int, args) -> dict:
    key = run_key(task, model, seed, args)
    config = common.experiment(task, "kd", "L3", seed, options(args), common.WORK / key)
    if model == "lad":
        config["student"] = {"path": str(common.WORK / general_key(args.general_tokens, args.general_lr) / "student")}
        config["recipe"] = dict(LAD)
    elif model == "lad-task":
        config["recipe"] = dict(LAD)
    elif model == "lengthdrop":
        config["recipe"] = dict(LENGTHDROP)
    config["bench"] = {**config["bench"], "keep_ratios": KEEP_RATIOS, "pruning_seq_lens": [LONG],
                       "length_search": dict(SEARCH)}
    return config


def options(args) -> "common.Options":
    return common.Options(epochs=args.epochs, threads=args.threads, max_train_samples=args.max_train_samples,
                          max_eval_samples=args.max_eval_samples)


def run_key(task: str, model: str, seed: int, args) -> str:
    key = f"{task}-{model}-L3-s{seed}" + (f"-e{args.epochs:g}" if args.epochs != common.DEFAULT_EPOCHS else "")
    key += f"-n{args.max_train_samples}" if args.max_train_samples else ""
    key += f"-v{args.max_eval_samples}" if args.max_eval_samples else ""
    if args.general_tokens != GENERAL_TOKENS and model == "lad":
        key += f"-g{args.general_tokens}"
    return key


def stored(key: str) -> dict | None:
    try:
        return json.loads((RESULTS / f"{key}.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run(key: str, config: dict, keep_folder: bool = False) -> dict:
    common._import_lmdistill()
    from lmdistill.api import distill

    start = time.time()
    result = distill(config, overwrite=True)
    record = {"key": key, "wall_s": round(time.time() - start, 1), "config": config, "report": result.report}
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=1)
    for pattern in config["recipe"].get("corpus", []):  # the books folder lies outside the repo: name it portably
        text = text.replace(str(Path(pattern).parent), "$LMDISTILL_BOOKS")
    tmp = RESULTS / f".tmp-{key}.json"
    tmp.write_text(text)
    os.replace(tmp, RESULTS / f"{key}.json")
    if not keep_folder:
        shutil.rmtree(config["output"], ignore_errors=True)
    return record


def plan(args) -> list[tuple[str, dict, bool]]:
    """(key, config, keep its folder) in run order: the general student first when lad is planned."""
    runs = []
    if "lad" in args.models:
        runs.append((general_key(args.general_tokens, args.general_lr), general_config(args), True))
    for task in args.tasks:
        for seed in args.seeds:
            for model in args.models:
                runs.append((run_key(task, model, seed, args), task_config(task, model, seed, args), False))
    return runs


# ---- tables and the curve ---------------------------------------------------------------------------

def _mean_std(values, scale=1.0, digits=2) -> str:
    return common.mean_std([v for v in values if v is not None], scale, digits)


def configurations(report: dict) -> list[tuple[str, dict]]:
    student = report["student"]
    rows = [(f"r={e['keep_ratio']:g}", e) for e in student.get("pruning", [])]
    rows += [("search " + ",".join(f"{x:g}" for x in e["length_config"]), e) for e in student.get("length_search", [])]
    return rows


def table(args) -> str:
    lines = []
    for task in args.tasks:
        lines += [f"#### {task}", "",
                  "| model | config | score (×100) | GFLOPs | b1 ms | b32 ms | b32 speed-up / FLOP ratio | "
                  f"GFLOPs @{LONG} | b32 ms @{LONG} | b32 speed-up / FLOP ratio @{LONG} | seeds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for model in args.models:
            found = [(s, r["report"]) for s in args.seeds if (r := stored(run_key(task, model, s, args)))]
            seeds, reports = [s for s, _ in found], [r for _, r in found]
            if not reports:
                lines.append(f"| {model} | (not run) | | | | | | | | | |")
                continue
            # keep ratios: mean ± std over seeds; searched configurations differ per seed: seed by seed
            base = {i: reports[i]["student"]["pruning"][0] for i in range(len(reports))}  # keep ratio 1.0
            labels = [label for label, _ in configurations(reports[0]) if label.startswith("r=")]
            for label in labels:
                entries = [dict(configurations(r))[label] for r in reports]
                lines.append(_row(model, label, entries, [base[i] for i in range(len(reports))], len(reports)))
            for i, report in enumerate(reports):
                if args.search_seeds is not None and seeds[i] not in args.search_seeds:
                    continue
                for label, entry in configurations(report):
                    if label.startswith("search"):
                        lines.append(_row(model, f"{label} (seed {seeds[i]})", [entry], [base[i]], 1))
        lines.append("")
    return "\n".join(lines)


def _ratio(entries, bases, at=None) -> str:
    values = []
    for e, b in zip(entries, bases):
        lat = (e.get("latency_ms_at", {}).get(at) if at else e["latency_ms"]) or {}
        lat_b = (b.get("latency_ms_at", {}).get(at) if at else b["latency_ms"]) or {}
        flops = e.get("gflops_batch1_at", {}).get(at) if at else e["gflops_batch1"]
        flops_b = b.get("gflops_batch1_at", {}).get(at) if at else b["gflops_batch1"]
        if lat.get("batch32") and lat_b.get("batch32") and flops and flops_b:
            speed, ideal = lat_b["batch32"] / lat["batch32"], flops_b / flops
            values.append((speed, ideal))
    if not values:
        return "n/a"
    speed = statistics.mean(v[0] for v in values)
    ideal = statistics.mean(v[1] for v in values)
    return f"{speed:.2f} / {ideal:.2f} ({speed / ideal:.2f})"


def _flops(values) -> str:
    """FLOPs follow from the configuration and the input lengths alone: the same in every seed, so no ± 0."""
    values = {round(v, 4) for v in values if v is not None}
    return f"{values.pop():.4f}" if len(values) == 1 else _mean_std(values, 1, 4)


def _row(model, label, entries, bases, seeds) -> str:
    at = str(LONG)
    return (f"| {model} | {label} | {_mean_std([e['score'] for e in entries], 100)} | "
            f"{_flops([e['gflops_batch1'] for e in entries])} | "
            f"{_mean_std([e['latency_ms']['batch1'] for e in entries], 1, 1)} | "
            f"{_mean_std([e['latency_ms']['batch32'] for e in entries], 1, 1)} | {_ratio(entries, bases)} | "
            f"{_flops([e.get('gflops_batch1_at', {}).get(at) for e in entries])} | "
            f"{_mean_std([e.get('latency_ms_at', {}).get(at, {}).get('batch32') for e in entries], 1, 1)} | "
            f"{_ratio(entries, bases, at)} | {seeds} |")


def plot(args, path: Path) -> None:
    """Accuracy against measured batch-32 latency (at 128 tokens), one line per model, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.tasks), figsize=(5.5 * len(args.tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], args.tasks):
        for model in args.models:
            reports = [r["report"] for s in args.seeds if (r := stored(run_key(task, model, s, args)))]
            if not reports:
                continue
            points = []
            for index in range(len(reports[0]["student"]["pruning"])):
                entries = [r["student"]["pruning"][index] for r in reports]
                points.append((statistics.mean(e["latency_ms_at"][str(LONG)]["batch32"] for e in entries),
                               statistics.mean(e["score"] for e in entries) * 100))
            points.sort()
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=model)
        teacher = next((r["report"]["teacher"]["score"] * 100 for m in args.models for s in args.seeds
                        if (r := stored(run_key(task, m, s, args)))), None)
        if teacher is not None:
            ax.axhline(teacher, color="grey", linestyle=":", label="teacher (6 layers)")
        ax.set_title(f"{task}: keep ratios 1.0 … 0.3")
        ax.set_xlabel(f"latency, batch 32 × {LONG} tokens (ms, median)")
        ax.set_ylabel("accuracy (×100)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"curve written to {path}")


def speed(args) -> str:
    """The pruned forward's own speed: an (untrained) 3-layer student cut from MiniLM-L6 at each keep ratio,
    against the plain transformers model, side by side, on real SST-2 text of fixed lengths. Latency does
    not depend on the weights, so no training is needed. Writes benchmarks/results/lad/speed-t<threads>.json."""
    common._import_lmdistill()
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from lmdistill import bench
    from lmdistill.config import TaskConfig
    from lmdistill.length_eval import LengthConfigured
    from lmdistill.models.pruning import resolve_lengths, to_prunable
    from lmdistill.models.students import layer_subset
    from lmdistill.models.teacher import SHORTCUTS, _package_dir
    from lmdistill.tasks import build_task

    folder = _package_dir(SHORTCUTS["minilm"][0]) / "model"
    plain = layer_subset(BertForSequenceClassification.from_pretrained(folder, num_labels=2), [0, 2, 4]).eval()
    prunable = to_prunable(plain).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    spec = dict(common.TASKS["sst2"], train=str(common.REPO / "data/sst2/train.tsv"),
                eval=str(common.REPO / "data/sst2/dev.tsv"))
    task = build_task(TaskConfig(**{**spec, "max_length": 128}), [])
    task.bind(plain.config)
    make_batch = lambda size, length: task.bench_batch(tokenizer, size, length, plain.config)  # noqa: E731
    threads = args.threads or torch.get_num_threads()
    record = {"threads": threads, "model": "MiniLM-L6 layers [0, 2, 4] (prunable-bert)", "lengths": {}}
    lines = [f"| input tokens | model | lengths | GFLOPs (b=1) | FLOP ratio | b1 ms | b32 ms | speed-up b32 | "
             "speed-up / FLOP ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for length in args.speed_lengths:
        contenders = {"plain": (plain, make_batch)}
        contenders.update({f"r={r:g}": (LengthConfigured(prunable, r), make_batch) for r in KEEP_RATIOS})
        latency = bench.compare_latency(contenders, [1, 32], length, 10, 2, threads, rounds=5)
        one = make_batch(1, length)
        flops = {name: bench.forward_gflops(model, one) for name, (model, _) in contenders.items()}
        rows = record["lengths"][str(length)] = {}
        for name in contenders:
            ratio = flops["r=1"] / flops[name]
            speedup = latency["r=1"]["batch32"] / latency[name]["batch32"]
            lens = resolve_lengths(None if name == "plain" else float(name[2:]), length, 3)
            rows[name] = {"gflops_batch1": round(flops[name], 5), "latency_ms": latency[name], "lengths": lens,
                          "flop_ratio": round(ratio, 3), "speedup_batch32": round(speedup, 3)}
            lines.append(f"| {length} | {name if name == 'plain' else 'prunable ' + name} | {lens} | "
                         f"{flops[name]:.4f} | {ratio:.2f} | {latency[name]['batch1']:.1f} | "
                         f"{latency[name]['batch32']:.1f} | {speedup:.2f} | {speedup / ratio:.2f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"speed-t{threads}.json").write_text(json.dumps(record, indent=1))
    caption = (f"\nMiniLM-L6 layers [0, 2, 4] (3 layers, 384 wide, 12 heads), real SST-2 dev text cut or extended to "
               f"exactly the input length, {threads} thread(s), CPU; median over 5 interleaved rounds of the median of 10 "
               f"(batch 1) / 3 (batch 32) forward passes. FLOP ratio: GFLOPs at keep ratio 1 / GFLOPs at r "
               f"(torch.utils.flop_counter, matmuls). 'plain' is transformers' BertForSequenceClassification (SDPA).")
    return "\n".join(lines) + caption


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[-1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=["sst2", "trec"], default=["sst2", "trec"])
    p.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=float, default=common.DEFAULT_EPOCHS, help="task epochs (every model)")
    p.add_argument("--general-tokens", type=int, default=GENERAL_TOKENS, help="stage 1 budget (corpus tokens)")
    p.add_argument("--general-lr", type=float, default=GENERAL_LR)
    p.add_argument("--books", default=None, help="the LitBank books folder (or $LMDISTILL_BOOKS): stage 1 text")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training and latency (1: on a shared "
                   "2-core machine, 2 threads run up to 8x slower)")
    p.add_argument("--max-train-samples", type=int, default=None, help="tiny check runs (key tag -n<N>)")
    p.add_argument("--max-eval-samples", type=int, default=None, help="key tag -v<N>")
    p.add_argument("--search-seeds", nargs="+", type=int, default=None,
                   help="table: the seeds whose searched configurations get rows (default: every seed)")
    p.add_argument("--plot", action="store_true", help="write benchmarks/results/lad-curve.png")
    p.add_argument("--speed", action="store_true", help="only the pruned forward's speed (no training), see speed()")
    p.add_argument("--speed-lengths", nargs="+", type=int, default=[25, 128])
    common.add_mode_flags(p)
    args = p.parse_args(argv)
    if args.speed:
        text = speed(args)
        print(text)
        if args.markdown:
            args.markdown.write_text(text + "\n")
        return 0
    runs = plan(args)
    failed = []
    if not args.table_only:
        common._import_lmdistill()
        from lmdistill.config import load_config
        from lmdistill.errors import ConfigError

        for key, config, _ in runs:
            try:
                load_config(config)
            except ConfigError as err:
                sys.exit(f"config error in run {key}: {err}")
        for key, _, _ in runs:
            print(f"  {'stored' if stored(key) else 'to run'} {key}")
        if args.dry_run:
            return 0
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        for key, config, keep in runs:
            if stored(key) and (not keep or Path(config["output"], "student").is_dir()):
                continue
            print(f"[run] {key}", flush=True)
            try:
                record = run(key, config, keep)
            except Exception as err:  # one failed run should not stop the suite
                failed.append(key)
                print(f"[fail] {key}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
                continue
            print(f"[done] {key}: {record['report']['student']['score']:.4f}, {record['wall_s']:.0f} s", flush=True)
    text = table(args)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    if args.plot:
        plot(args, common.RESULTS / "lad-curve.png")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
