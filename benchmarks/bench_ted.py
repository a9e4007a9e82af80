"""TED suite: ted against finetune, kd and lwd on SST-2, TREC and WikiANN NER.

Matrix: tasks sst2, trec, wikiann x students L3, L2 (teacher layers, picked uniformly, initialised
from the fine-tuned teacher) x recipes finetune, kd, lwd, ted x seeds 0, 1, 2 = 72 runs. WikiANN:
data/wikiann_en train/dev (CoNLL), first 10k / 2k sentences, entity F1. The finetune/kd/lwd runs of
SST-2 and TREC are the ones bench_recipes.py makes (same keys, trained once).

ted: the preset RECIPES["ted"] of benchmarks/common.py (T 2, alpha_kl 20, alpha_mse 10, one linear
filter per student layer; every stage, i.e. teacher filters, student fine-tune, student filters and
stage II, runs the protocol's epochs and lr unless the preset says other). Variants get their own
preset name, so they never collide with the default runs:
  --alpha-mse 5 10 20 100   one ted variant per value: ted-amse5, ted (10 is the default), ted-amse20, ...
  --alpha-kl 1              alpha_kl 1 instead of 20: ted-akl1
  --filter-interval 2       student_filter_interval 2 (the teacher's interval follows): ted-fi2
  --nonlinear               Linear-activation-Linear filters: ted-nl
  --variants ted ted-nl ... any list of variant names, e.g. for one table of all the tries

Protocol (benchmarks/common.py, the same for every suite): teacher MiniLM-L6 fine-tuned once per task,
3 epochs at lr 5e-5 (teacher.seed 42, cached); students 1 epoch, batch 32, lr 1e-4, max_length 64
(SST-2, WikiANN) / 32 (TREC); latency: median of 10 forward passes, batch 1 and 32. One JSON per run
in benchmarks/results/runs/<key>.json (e.g. wikiann-ted-L3-s0, sst2-ted-amse20-L3-s1); stored runs are
skipped, so the suite resumes.

    .venv/bin/python benchmarks/bench_ted.py --dry-run
    .venv/bin/python benchmarks/bench_ted.py                      # run what is missing, print the table
    .venv/bin/python benchmarks/bench_ted.py --table-only --markdown benchmarks/results/ted.md
    .venv/bin/python benchmarks/bench_ted.py --tasks sst2 --layers 3 --recipes ted --alpha-mse 5 10 20 100 \\
        --table-only --markdown benchmarks/results/ted-alpha-mse.md        # the alpha_mse sweep
"""

from __future__ import annotations

import sys

import common

TASKS = ["sst2", "trec", "wikiann"]
LAYERS = [3, 2]
RECIPES = ["finetune", "kd", "lwd", "ted"]
SEEDS = 3


def main(argv=None) -> int:
    parser = common.parser(__doc__, TASKS, RECIPES, RECIPES, LAYERS, SEEDS)
    parser.add_argument("--alpha-mse", nargs="+", type=float, default=None,
                        help="ted: one variant per value (a sweep); default: the preset's")
    parser.add_argument("--alpha-kl", type=float, default=None, help="ted: alpha_kl of every variant")
    parser.add_argument("--filter-interval", type=int, default=None,
                        help="ted: student_filter_interval (the teacher's follows to give the same filter count)")
    parser.add_argument("--nonlinear", action="store_true", help="ted: Linear-activation-Linear filters")
    parser.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                        help="ted variants by preset name (e.g. ted ted-amse1 ted-nl ted-fi2 ted-akl1), instead of the "
                             "--alpha-mse/--alpha-kl/--filter-interval/--nonlinear product")
    args = parser.parse_args(argv)
    variants = [common.ted_name(value, args.filter_interval, args.nonlinear, args.alpha_kl) for value in (args.alpha_mse or [None])]
    if args.variants:
        for name in args.variants:
            try:
                common.recipe_settings(name)
            except ValueError as err:
                parser.error(str(err))
        variants = list(args.variants)
    recipes = []
    for name in args.recipes:
        recipes += [r for r in (variants if name == "ted" else [name]) if r not in recipes]
    students = [common.student_name(n) for n in args.layers]
    runs = common.plan(args.tasks, students, recipes, args.seeds, common.Options.from_args(args))
    shown = "TED vs finetune, kd, lwd" if recipes == RECIPES else ", ".join(recipes)
    title = f"{shown}, MiniLM-L6 teacher, {common.layers_phrase(args.layers)} (teacher weights)"
    return common.suite_main(args, runs, title)


if __name__ == "__main__":
    sys.exit(main())
