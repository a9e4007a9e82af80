"""Foundation suite: finetune, kd and lwd with the real MiniLM-L6 teacher on SST-2 and TREC.

Matrix: tasks sst2, trec x students L3, L2 (3 or 2 of the teacher's 6 layers, picked uniformly,
initialised from the fine-tuned teacher) x recipes finetune, kd (T 4, alpha 0.5), lwd (kd + uniform
layer map, hidden-state MSE, beta 1) x seeds 0, 1, 2 = 36 runs.

Protocol (benchmarks/common.py, the same for every suite): teacher fine-tuned once per task, 2 epochs
at lr 5e-5 (teacher.seed 42, cached and shared by every seed and suite); students 1 epoch, batch 32,
lr 1e-4, max_length 64 (SST-2) / 32 (TREC); latency: median of 10 forward passes at the median eval
length, batch 1 and 32, teacher and student measured in the same process. One JSON per run in
benchmarks/results/runs/<key>.json (key e.g. sst2-kd-L3-s0, shared with the other suites); stored
runs are skipped, so the suite resumes.

    .venv/bin/python benchmarks/bench_recipes.py --dry-run       # check the configs, show the plan
    .venv/bin/python benchmarks/bench_recipes.py                 # run what is missing, print the table
    .venv/bin/python benchmarks/bench_recipes.py --table-only --markdown benchmarks/results/recipes.md
"""

from __future__ import annotations

import sys

import common

TASKS = ["sst2", "trec"]
LAYERS = [3, 2]
RECIPES = ["finetune", "kd", "lwd"]
SEEDS = 3


def main(argv=None) -> int:
    args = common.parser(__doc__, TASKS, RECIPES, RECIPES, LAYERS, SEEDS).parse_args(argv)
    students = [common.student_name(n) for n in args.layers]
    runs = common.plan(args.tasks, students, args.recipes, args.seeds, common.Options.from_args(args))
    return common.suite_main(args, runs, "finetune vs kd vs lwd, MiniLM-L6 teacher, "
                                         f"{common.layers_phrase(args.layers)} (teacher weights)")


if __name__ == "__main__":
    sys.exit(main())
