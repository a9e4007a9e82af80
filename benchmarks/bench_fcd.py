"""FCD suite: FCD-style (token-only, sequence-only, both) against finetune, kd and lwd on SST-2 and TREC.

Matrix: tasks sst2, trec x students L3, L2 x recipes finetune, kd, lwd, fcd-token (gamma 0), fcd-seq
(beta 0), fcd-both x seeds 0, 1, 2 = 72 runs. `--recipes fcd` means its three forms. fcd presets:
alpha_task 0.5, alpha_kd 0.5, T 4 (as kd, so fcd minus kd isolates the relation terms), uniform
layer map, beta/gamma 1 or 0. fcd is OUR reconstruction (src/lmdistill/recipes/fcd.py): report it
as "FCD-style".

Students: by default the teacher's own layers, picked uniformly, initialised from the fine-tuned
teacher (`L3`, `L2`; these runs are shared with bench_recipes.py). With --narrow they are instead NEW
narrow models (`L3-narrow`, `L2-narrow`): 192 wide (12 heads of 16), intermediate 768, N layers,
initialised AT RANDOM (from scratch): the setting where fcd needs no projection and lwd learns one.
The narrow table says so in its title.

Protocol (benchmarks/common.py, the same for every suite, --narrow included): teacher MiniLM-L6
fine-tuned once per task, 3 epochs at lr 5e-5 (teacher.seed 42, cached); students 1 epoch, batch 32,
lr 1e-4, max_length 64 (SST-2) / 32 (TREC); latency: median of 10 forward passes, batch 1 and 32.
One JSON per run in benchmarks/results/runs/<key>.json (e.g. sst2-fcd-token-L3-s0,
trec-lwd-L2-narrow-s1); stored runs are skipped, so the suite resumes.

    .venv/bin/python benchmarks/bench_fcd.py --dry-run
    .venv/bin/python benchmarks/bench_fcd.py                      # run what is missing, print the table
    .venv/bin/python benchmarks/bench_fcd.py --narrow             # the from-scratch narrow students
    .venv/bin/python benchmarks/bench_fcd.py --table-only --markdown benchmarks/results/fcd.md
    .venv/bin/python benchmarks/bench_fcd.py --narrow --table-only --markdown benchmarks/results/fcd-narrow.md
"""

from __future__ import annotations

import sys

import common

TASKS = ["sst2", "trec"]
LAYERS = [3, 2]
FCD = ["fcd-token", "fcd-seq", "fcd-both"]
RECIPES = ["finetune", "kd", "lwd", *FCD]
SEEDS = 3


def main(argv=None) -> int:
    parser = common.parser(__doc__, TASKS, [*RECIPES[:3], "fcd"], [*RECIPES, "fcd"], LAYERS, SEEDS)
    parser.add_argument("--narrow", action="store_true",
                        help="students are NEW 192-wide models of --layers layers, initialised at random")
    args = parser.parse_args(argv)
    recipes = []
    for name in args.recipes:
        recipes += [r for r in (FCD if name == "fcd" else [name]) if r not in recipes]
    students = [common.student_name(n, args.narrow) for n in args.layers]
    runs = common.plan(args.tasks, students, recipes, args.seeds, common.Options.from_args(args))
    if args.narrow:
        title = (f"FCD-style vs finetune, kd, lwd, MiniLM-L6 teacher, NARROW students: new 192-wide models of "
                 f"{' or '.join(map(str, args.layers))} layers (12 heads, intermediate 768) initialised at random "
                 "(from scratch)")
    else:
        title = (f"FCD-style vs finetune, kd, lwd, MiniLM-L6 teacher, {common.layers_phrase(args.layers)} "
                 "(teacher weights)")
    return common.suite_main(args, runs, title)


if __name__ == "__main__":
    sys.exit(main())
