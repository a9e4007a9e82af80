"""Foundation benchmark: finetune, kd and lwd with the real MiniLM-L6 teacher on SST-2 and TREC,
students of 3 and 2 layers (teacher layers picked uniformly, fine-tuned teacher weights), 3 seeds.

    python benchmarks/bench_recipes.py                 # runs what is missing, prints the table
    python benchmarks/bench_recipes.py --table-only    # the table from benchmarks/results/runs/*.json

Protocol (CPU): 1 epoch, batch 32, lr 1e-4, max_length 64 (SST-2) / 32 (TREC); the teacher is
fine-tuned once per task (2 epochs, lr 5e-5) and cached. Latency: median of 10 forward passes at
the median eval length, 2 threads, batch 1 and 32, measured in the same process for both models.
"""

from __future__ import annotations

from common import RECIPES, RESULTS, RUNS, base_parser, experiment, run, run_key, table

RECIPE_ORDER = ["finetune", "kd", "lwd"]


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=RECIPE_ORDER)
    args = parser.parse_args()
    tag = (f"-n{args.max_train_samples}" if args.max_train_samples else "") + (
        f"-e{args.epochs:g}" if args.epochs != 1 else "")
    records, groups = [], []
    for task in args.tasks:
        for layers in args.layers:
            for recipe in args.recipes:
                groups.append((task, f"{layers} layers", recipe))
                for seed in range(args.seeds):
                    key = run_key(task, recipe, layers, seed, tag)
                    output = RESULTS.parent.parent / "runs" / "bench" / key
                    config = experiment(task, RECIPES[recipe], {"num_layers": layers}, seed, args.epochs,
                                        args.max_train_samples, output)
                    record = run(key, config, dry_run=args.dry_run or args.table_only) if not (
                        args.table_only and not (RUNS / f"{key}.json").exists()) else None
                    if record:
                        record["group"] = (task, f"{layers} layers", recipe)
                        records.append(record)
    print(table(records, groups, "finetune vs kd vs lwd (MiniLM-L6 teacher)"))


if __name__ == "__main__":
    main()
