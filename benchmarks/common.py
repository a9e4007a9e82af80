"""The one benchmark machinery behind bench_recipes.py, bench_fcd.py and bench_ted.py.

A suite script only declares its matrix (tasks x students x recipes x seeds, plus its own options)
and calls `suite_main`; everything else lives here: the task, student and recipe presets, the
protocol, one result JSON per run, resuming, the plan check and the mean ± std table.

Protocol (every suite, every run; `experiment()` builds the config):
  teacher   the packaged MiniLM-L6 (`teacher: minilm`, 6 layers, 384 wide), fine-tuned on the task by
            lmdistill for 3 epochs at lr 5e-5, batch 32, teacher.seed left at its default (42), and
            cached: every student seed and every suite shares ONE fine-tuned teacher per task (and per
            max-train-samples setting, which changes the teacher's data).
  students  `L<n>`: n of the teacher's 6 layers, picked uniformly, initialised from the fine-tuned
            teacher (`student: {num_layers: n}`). `L<n>-narrow`: a NEW model, 192 wide (12 heads of
            16), intermediate 768, n layers, initialised at random (from scratch).
  training  1 epoch (--epochs), batch 32, lr 1e-4, AdamW with the toolkit's defaults, seed = the run's
            seed; max_length 64 (SST-2), 32 (TREC), 64 (WikiANN). WikiANN uses the first 10k train and
            2k dev sentences. Each ted stage (teacher filters, student fine-tune, student filters,
            stage II) runs training.epochs at training.learning_rate, as RECIPES["ted"] states.
  bench     teacher and student measured in the same process with the same inputs: median of 10
            forward passes (2 warm-up) at the median eval length, batch 1 and 32, peak memory off.
            Speed-ups are measured on whatever else the machine is doing at the time (see the std).

Results: benchmarks/results/runs/<key>.json = {"key", "wall_s", "config", "report"} where report is
the lmdistill report dict and config the dict given to `lmdistill.api.distill`. The key encodes
everything that changes a result (see `run_key`), so a run that several suites plan (e.g.
sst2-kd-L3-s0) is trained once and shared. A run whose JSON exists is skipped, so a killed suite
resumes; a killed run continues from its last checkpoint when its config is unchanged. Each run's
folder (runs/bench/<key>) is deleted once its JSON is written. Tables are built only from the JSON.

Every suite takes --dry-run (check every config of the plan, print the keys to run / stored),
--table-only (the table from the stored JSON, nothing runs) and --markdown FILE (also write the
table there). The tables (each command run first without --table-only to fill in missing runs):

    .venv/bin/python benchmarks/bench_recipes.py --table-only --markdown benchmarks/results/recipes.md
    .venv/bin/python benchmarks/bench_fcd.py --table-only --markdown benchmarks/results/fcd.md
    .venv/bin/python benchmarks/bench_fcd.py --narrow --table-only --markdown benchmarks/results/fcd-narrow.md
    .venv/bin/python benchmarks/bench_ted.py --table-only --markdown benchmarks/results/ted.md
    .venv/bin/python benchmarks/bench_ted.py --tasks sst2 --layers 3 --recipes ted --alpha-mse 5 10 20 100 \\
        --table-only --markdown benchmarks/results/ted-alpha-mse.md
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RUNS = RESULTS / "runs"  # one JSON per run: the only input of the tables
def outside_data(given: Path | str | None, env: str, option: str, what: str, script: str) -> Path:
    """A data path too large to ship in the repo, given by `option` or the environment variable `env`;
    a missing one stops the script with one line naming both."""
    text = str(given or os.environ.get(env) or "")
    if not text or not Path(text).exists():
        sys.exit(f"{script}: {option} (or ${env}): give {what}; got '{text}'")
    return Path(text)


def books_folder(given: Path | str | None, script: str) -> Path:
    """The LitBank books folder (80 public-domain novels, 45 MB: too large to ship in the repo). Give it
    with --books or $LMDISTILL_BOOKS; a missing folder stops the script with one line."""
    what = "the LitBank books folder of .txt files (litbank_books/texts of the project's data)"
    folder = outside_data(given, "LMDISTILL_BOOKS", "--books", what, script)
    if not any(folder.glob("*.txt")):
        sys.exit(f"{script}: --books (or $LMDISTILL_BOOKS): give {what}; got '{folder}'")
    return folder


WORK = REPO / "runs" / "bench"  # run folders (student, checkpoints), deleted after each run

# teacher.seed: its default (42). The caption in `table` states these values too.
TEACHER = {"path": "minilm", "epochs": 3, "learning_rate": 5e-5}
TEACHER_LAYERS = 6
STUDENT_LR = 1e-4  # the caption in `table` says so too
BATCH_SIZE = 32
DEFAULT_EPOCHS = 1.0
BENCH = {"repeats": 10, "warmup": 2, "batch_sizes": [1, 32], "memory": False}

# Data paths are relative to the repository root.
TASKS = {
    "sst2": {"kind": "classification", "train": "data/sst2/train.tsv", "eval": "data/sst2/dev.tsv",
             "text": "sentence", "label": "label", "max_length": 64},
    "trec": {"kind": "classification", "train": "data/trec/train.tsv", "eval": "data/trec/test.tsv",
             "text": "question", "label": "label_coarse", "max_length": 32},
    "wikiann": {"kind": "token-classification", "train": "data/wikiann_en/train.txt",
                "eval": "data/wikiann_en/dev.txt", "format": "conll", "text": "tokens", "label": "tags",
                "max_length": 64, "max_train_samples": 10000, "max_eval_samples": 2000},
}

# Recipe presets. The name is part of the run key: a preset must never change once results exist
# under its name; add a new name instead. Setting names: lmdistill.recipes.{kd,lwd,fcd,ted}.
RECIPES = {
    "finetune": {"name": "finetune"},
    "kd": {"name": "kd", "temperature": 4.0, "alpha": 0.5},
    "lwd": {"name": "lwd", "temperature": 4.0, "alpha": 0.5, "layer_map": "uniform", "beta": 1.0},
    # FCD-style (our reconstruction, see src/lmdistill/recipes/fcd.py): token-only, sequence-only, both.
    "fcd-token": {"name": "fcd", "temperature": 4.0, "alpha_task": 0.5, "alpha_kd": 0.5, "layer_map": "uniform",
                  "beta": 1.0, "gamma": 0.0},
    "fcd-seq": {"name": "fcd", "temperature": 4.0, "alpha_task": 0.5, "alpha_kd": 0.5, "layer_map": "uniform",
                "beta": 0.0, "gamma": 1.0},
    "fcd-both": {"name": "fcd", "temperature": 4.0, "alpha_task": 0.5, "alpha_kd": 0.5, "layer_map": "uniform",
                 "beta": 1.0, "gamma": 1.0},
    # TED (TEDSettings). The per-stage epochs / learning rates are stated here; None means the
    # protocol's training.epochs / training.learning_rate. Variants: see `ted_name`.
    "ted": {"name": "ted", "temperature": 2.0, "alpha_kl": 20.0, "alpha_mse": 10.0,
            "student_filter_interval": 1, "teacher_filter_interval": None, "filter_nonlinear": False,
            "stage1_teacher_epochs": None, "stage1_teacher_lr": None,
            "student_finetune_epochs": None, "student_finetune_lr": None,
            "stage1_student_epochs": None, "stage1_student_lr": None,
            "stage2_epochs": None, "stage2_lr": None},
}
_NUMBER = r"\d+(?:\.\d+)?(?:e[+-]?\d+)?"
_TED_VARIANT = re.compile(rf"ted(?:-amse(?P<amse>{_NUMBER}))?(?:-akl(?P<akl>{_NUMBER}))?(?:-fi(?P<fi>\d+))?(?P<nl>-nl)?")

NARROW = {"hidden_size": 192, "intermediate_size": 768, "num_attention_heads": 12}  # 12 heads of 16
_STUDENT = re.compile(r"L(?P<layers>\d+)(?P<narrow>-narrow)?")


def ted_name(alpha_mse: float | None = None, filter_interval: int | None = None, nonlinear: bool = False,
             alpha_kl: float | None = None) -> str:
    """Preset name of a ted variant: ted[-amse<alpha_mse>][-akl<alpha_kl>][-fi<student interval>][-nl]."""
    name = "ted"
    if alpha_mse is not None and alpha_mse != RECIPES["ted"]["alpha_mse"]:
        name += f"-amse{alpha_mse:g}"
    if alpha_kl is not None and alpha_kl != RECIPES["ted"]["alpha_kl"]:
        name += f"-akl{alpha_kl:g}"
    if filter_interval is not None and filter_interval != RECIPES["ted"]["student_filter_interval"]:
        name += f"-fi{filter_interval}"
    if nonlinear:
        name += "-nl"
    return name


def recipe_settings(name: str) -> dict:
    """The recipe section of a preset name (a RECIPES key, or a ted variant from `ted_name`)."""
    if name in RECIPES:
        return dict(RECIPES[name])
    match = _TED_VARIANT.fullmatch(name)
    if not match:
        raise ValueError(f"unknown recipe preset '{name}' (presets: {', '.join(RECIPES)}, or ted variants)")
    settings = dict(RECIPES["ted"])
    if match["amse"]:
        settings["alpha_mse"] = float(match["amse"])
    if match["akl"]:
        settings["alpha_kl"] = float(match["akl"])
    if match["fi"]:
        settings["student_filter_interval"] = int(match["fi"])
    if match["nl"]:
        settings["filter_nonlinear"] = True
    return settings


def student_name(layers: int, narrow: bool = False) -> str:
    return f"L{layers}{'-narrow' if narrow else ''}"


def student_settings(name: str) -> dict:
    """The student section of a student name: L<n> (teacher layers) or L<n>-narrow (random init)."""
    match = _STUDENT.fullmatch(name)
    if not match:
        raise ValueError(f"unknown student '{name}' (L<n> or L<n>-narrow)")
    layers = int(match["layers"])
    if match["narrow"]:
        return {"config": {**NARROW, "num_hidden_layers": layers}}
    return {"num_layers": layers}


def layers_phrase(layers: list[int]) -> str:
    """For a table title: 'students keep 3 or 2 of its 6 layers'."""
    return f"students keep {' or '.join(map(str, layers))} of its {TEACHER_LAYERS} layers"


def student_label(name: str) -> str:
    match = _STUDENT.fullmatch(name)
    return f"{match['layers']} layers" + (", 192 wide, random init" if match["narrow"] else "")


@dataclass(frozen=True)
class Options:
    """Settings that apply to every run of a suite invocation; each one not at its default is in the key."""

    epochs: float = DEFAULT_EPOCHS
    max_train_samples: int | None = None  # None: the task preset's (all of SST-2/TREC, 10k WikiANN)
    max_eval_samples: int | None = None  # None: the task preset's (all of SST-2/TREC, 2k WikiANN)
    threads: int | None = None  # torch threads for training and latency; None: torch's default
    learning_rate: float = STUDENT_LR

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Options":
        return cls(args.epochs, args.max_train_samples, args.max_eval_samples, args.threads, args.lr)


def _override(task: str, field: str, value: int | None) -> int | None:
    """The value to set when it differs from the task preset's, else None."""
    return value if value is not None and value != TASKS[task].get(field) else None


def run_key(task: str, recipe: str, student: str, seed: int, options: Options = Options()) -> str:
    """<task>-<recipe preset>-<student>-s<seed>[-e<epochs>][-n<max train>][-v<max eval>][-t<threads>],
    e.g. sst2-kd-L3-s0, trec-fcd-token-L2-narrow-s1, wikiann-ted-amse20-L3-s2-e2-n2000."""
    key = f"{task}-{recipe}-{student}-s{seed}"
    if options.epochs != DEFAULT_EPOCHS:
        key += f"-e{options.epochs:g}"
    if (n := _override(task, "max_train_samples", options.max_train_samples)) is not None:
        key += f"-n{n}"
    if (n := _override(task, "max_eval_samples", options.max_eval_samples)) is not None:
        key += f"-v{n}"
    if options.threads:
        key += f"-t{options.threads}"
    if options.learning_rate != STUDENT_LR:
        key += f"-lr{options.learning_rate:g}"
    return key


def experiment(task: str, recipe: str, student: str, seed: int, options: Options = Options(),
               output: Path | None = None) -> dict:
    """The lmdistill config of one run under the protocol (see the module docstring)."""
    task_cfg = dict(TASKS[task])
    task_cfg["train"] = str(REPO / task_cfg["train"])
    task_cfg["eval"] = str(REPO / task_cfg["eval"])
    if (n := _override(task, "max_train_samples", options.max_train_samples)) is not None:
        task_cfg["max_train_samples"] = n
    if (n := _override(task, "max_eval_samples", options.max_eval_samples)) is not None:
        task_cfg["max_eval_samples"] = n
    training = {"epochs": options.epochs, "batch_size": BATCH_SIZE, "learning_rate": options.learning_rate, "seed": seed,
                "logging_steps": 50, "save_steps": 500, "save_total_limit": 1}
    bench = dict(BENCH)
    if options.threads:
        training["num_threads"] = options.threads
        bench["num_threads"] = options.threads
    return {
        "teacher": dict(TEACHER),
        "student": student_settings(student),
        "task": task_cfg,
        "recipe": recipe_settings(recipe),
        "training": training,
        "bench": bench,
        "output": str(output or WORK / run_key(task, recipe, student, seed, options)),
    }


@dataclass(frozen=True)
class Run:
    key: str
    task: str
    student: str
    recipe: str
    seed: int
    config: dict

    @property
    def path(self) -> Path:
        return RUNS / f"{self.key}.json"


def plan(tasks: list[str], students: list[str], recipes: list[str], seeds: int | list[int],
         options: Options = Options()) -> list[Run]:
    """Every (task, student, recipe, seed), in table order."""
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    runs = []
    for task in tasks:
        for student in students:
            for recipe in recipes:
                for seed in seeds:
                    key = run_key(task, recipe, student, seed, options)
                    runs.append(Run(key, task, student, recipe, seed,
                                    experiment(task, recipe, student, seed, options, WORK / key)))
    return runs


# ---- checking and running ------------------------------------------------------------------------

def _import_lmdistill() -> None:
    src = str(REPO / "src")
    if src not in sys.path:
        sys.path.insert(0, src)


def validate(runs: list[Run]) -> None:
    """Check every config of the plan before the first (long) run; exit naming the first bad key."""
    _import_lmdistill()
    from lmdistill.config import load_config
    from lmdistill.errors import ConfigError

    for run in runs:
        try:
            config = load_config(run.config)
            for field in ("train", "eval"):
                if not Path(run.config["task"][field]).is_file():
                    raise ConfigError(f"task.{field}: {run.config['task'][field]} not found")
            if config.recipe.name == "ted" and config.teacher.path == TEACHER["path"]:  # TEDRecipe's filter-count check
                layers = config.student.num_layers or (config.student.config or {}).get("num_hidden_layers")
                s_count = layers // config.recipe.student_filter_interval
                t_interval = config.recipe.teacher_filter_interval or max(1, TEACHER_LAYERS // max(1, s_count))
                if s_count == 0 or TEACHER_LAYERS // t_interval != s_count:
                    raise ConfigError(f"recipe: {layers} student layers with filter interval "
                                      f"{config.recipe.student_filter_interval} give {s_count} filters, which the "
                                      f"{TEACHER_LAYERS}-layer teacher cannot match")
        except ConfigError as err:
            sys.exit(f"config error in run {run.key}: {err}")


def stored(run: Run) -> dict | None:
    try:
        return json.loads(run.path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _signature(config: dict) -> str:
    """A config without its machine-specific paths, to compare a stored run with the plan."""
    config = json.loads(json.dumps(config))
    config.pop("output", None)
    for field in ("train", "eval"):
        path = Path(config["task"][field])
        if path.is_relative_to(REPO):
            text = str(path.relative_to(REPO))
        else:
            # A run made in another checkout (a snapshot copy of the repo) read its data under its own
            # root: compared from the first top-level folder on, it is the same file.
            text = str(path)
            cuts = [text.index(top) + 1 for top in ("/runs/", "/data/", "/benchmarks/") if top in text]
            text = text[min(cuts):] if cuts else text
        config["task"][field] = text
    return json.dumps(config, sort_keys=True)


def _stale(run: Run, record: dict) -> bool:
    try:
        return _signature(record["config"]) != _signature(run.config)
    except (KeyError, TypeError):
        return True


def _claim(run: Run) -> bool:
    """A lock file, so that two suites started together do not train the same key in one folder."""
    lock = WORK / f"{run.key}.lock"
    WORK.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(lock.read_text() or 0), 0)
                return False  # its owner is alive
            except (ProcessLookupError, ValueError, OSError):
                lock.unlink(missing_ok=True)  # left by a killed suite
                continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def run_one(run: Run, after=None) -> dict:
    """Train and measure one run, write its JSON atomically, delete its folder; return the record.
    `after(result)` (a suite's extra measurement of the trained run) returns fields added to the record."""
    _import_lmdistill()
    from lmdistill.api import distill
    from lmdistill.config import config_to_dict, load_config
    from lmdistill.run_folder import MARKER

    output = Path(run.config["output"])
    config = load_config(run.config)
    try:  # a killed run with the same config continues from its checkpoints; anything else starts over
        same = json.loads((output / "config.json").read_text()) == config_to_dict(config)
        same = same and (output / MARKER).is_file()  # folders of older lmdistill versions cannot resume
    except (OSError, json.JSONDecodeError):
        same = False
    if not same:
        shutil.rmtree(output, ignore_errors=True)  # runs/bench/<key> is this harness's own folder
    start = time.time()
    result = distill(config, resume=same)
    record = {"key": run.key, "wall_s": round(time.time() - start, 1), "config": run.config, "report": result.report}
    if after is not None:
        record.update(after(result))
    RUNS.mkdir(parents=True, exist_ok=True)
    tmp = run.path.with_name(f".tmp-{run.path.name}")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, run.path)
    shutil.rmtree(output, ignore_errors=True)  # the report is in the JSON
    return record


def execute(runs: list[Run], after=None) -> list[str]:
    """Run every planned run whose JSON is missing; keep going past failures; return the failed keys."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    todo = [run for run in runs if not run.path.is_file()]
    failed = []
    for i, run in enumerate(todo, 1):
        if run.path.is_file():  # stored meanwhile by another suite
            continue
        if not _claim(run):
            print(f"[{i}/{len(todo)}] {run.key}: being run by another process, skipped", flush=True)
            continue
        print(f"[{i}/{len(todo)}] {run.key}", flush=True)
        try:
            record = run_one(run, after)
        except Exception as err:  # one failed run should not stop an hours-long suite
            failed.append(run.key)
            print(f"[fail] {run.key}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            continue
        finally:
            (WORK / f"{run.key}.lock").unlink(missing_ok=True)
        report = record["report"]
        print(f"[done] {run.key}: {report['student']['metric']} {report['student']['score']:.4f} "
              f"(teacher {report['teacher']['score']:.4f}), retention {report['retention']:.4f}, "
              f"speed-up b32 {report['speedup'].get('batch32', 'n/a')}, {record['wall_s']:.0f} s", flush=True)
    return failed


def print_plan(runs: list[Run]) -> None:
    records = {run.key: stored(run) for run in runs}
    done = sum(r is not None for r in records.values())
    where = RUNS.relative_to(REPO) if RUNS.is_relative_to(REPO) else RUNS
    print(f"plan: {len(runs)} runs, {done} stored, {len(runs) - done} to run (results: {where}/<key>.json)")
    for run in runs:
        record = records[run.key]
        state = "to run" if record is None else ("STORED, CONFIG DIFFERS" if _stale(run, record) else "stored")
        print(f"  {state:<7} {run.key}")


# ---- tables --------------------------------------------------------------------------------------

def mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(runs: list[Run], title: str, options: Options = Options()) -> str:
    """Markdown: a title, one teacher row per task, then per (task, student, recipe) the mean ± std over
    the stored seeds of the score (x100), retention (%) and batch-32 speed-up; then the protocol."""
    records = {run.key: stored(run) for run in runs}
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.task, run.student, run.recipe), []).append(run)
    lines = [f"### {title}", "",
             "| task | student | recipe | metric | score (×100) | retention (%) | speed-up b32 (×) | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    teachers_done, threads, devices, stale = set(), set(), set(), []
    for (task, student, recipe), members in groups.items():
        reports = [records[r.key]["report"] for r in members if records[r.key]]
        stale += [r.key for r in members if records[r.key] and _stale(r, records[r.key])]
        if not reports:
            continue
        if task not in teachers_done:
            teachers_done.add(task)
            teacher = [records[r.key]["report"]["teacher"]["score"] for r in runs if r.task == task and records[r.key]]
            teacher = teacher[:1] if len(set(teacher)) == 1 else teacher  # one cached teacher: one value
            lines.append(f"| {task} | teacher (MiniLM-L6) | — | {reports[0]['teacher']['metric']} | "
                         f"{mean_std(teacher, 100)} | 100 | 1.00 | — |")
        threads |= {r.get("bench", {}).get("threads") for r in reports}
        devices |= {r.get("bench", {}).get("device") for r in reports}
        seeds = f"{len(reports)}" if len(reports) == len(members) else f"{len(reports)} of {len(members)}"
        lines.append(
            f"| {task} | {student_label(student)} | {recipe} | {reports[0]['student']['metric']} | "
            f"{mean_std([r['student']['score'] for r in reports], 100)} | "
            f"{mean_std([r['retention'] for r in reports], 100)} | "
            f"{mean_std([r['speedup'].get('batch32') for r in reports])} | {seeds} |")
    if not teachers_done:
        lines.append("| (no stored results yet) | | | | | | | |")
    tasks = list(dict.fromkeys(run.task for run in runs))
    names = {"sst2": "SST-2", "trec": "TREC", "wikiann": "WikiANN"}
    lengths = ", ".join(f"{TASKS[t]['max_length']} ({names.get(t, t)})" for t in tasks)
    data = []
    for t in tasks:
        n_train = _override(t, "max_train_samples", options.max_train_samples) or TASKS[t].get("max_train_samples")
        n_eval = _override(t, "max_eval_samples", options.max_eval_samples) or TASKS[t].get("max_eval_samples")
        if n_train or n_eval:
            data.append(f"{names.get(t, t)} uses the first {n_train or 'all'} train / {n_eval or 'all'} eval examples")
    metrics = {"classification": "accuracy", "token-classification": "entity F1"}
    score = "; ".join(f"{names.get(t, t)} {metrics.get(TASKS[t]['kind'], '?')}" for t in tasks)
    epochs = options.epochs
    threads_s = ", ".join(str(t) for t in sorted(t for t in threads if t is not None)) or "?"
    devices_s = ", ".join(sorted(d for d in devices if d)) or "?"
    seeds_s = ", ".join(str(s) for s in sorted({run.seed for run in runs if records[run.key]})) or "none"
    lines += ["", (
        f"Protocol: teacher MiniLM-L6 fine-tuned {TEACHER['epochs']} epochs at lr 5e-5 (seed 42, cached, one per "
        f"task); students {epochs:g} epoch{'s' if epochs != 1 else ''} at lr {options.learning_rate:g}, batch {BATCH_SIZE}; "
        f"max_length {lengths}" + (f"; {'; '.join(data)}" if data else "") + f". Score ×100: {score}. "
        f"Mean ± std over the stored seeds ({seeds_s}; the seeds column says how many of the planned ones). Speed-up: teacher / student median latency at batch 32 "
        f"({BENCH['repeats']} forward passes at the median eval length, {threads_s} threads, {devices_s}), "
        f"measured in each run." + (
            f" ted: each of its 4 stages runs {epochs:g} epoch{'s' if epochs != 1 else ''} at lr {options.learning_rate:g}, so its student "
            f"backbone trains {2 * epochs:g} epochs (fine-tune, then stage II)." if any(run.recipe.startswith("ted") for run in runs) else ""))]
    if stale:
        lines.append(f"\nWARNING: {len(stale)} stored runs were made with another config than this plan's: "
                     + ", ".join(stale))
    return "\n".join(lines)


# ---- the command line shared by every suite -----------------------------------------------------

def parser(doc: str, tasks: list[str], recipes: list[str], recipe_choices: list[str],
           layers: list[int] = (3, 2), seeds: int = 3) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[-1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(tasks))
    p.add_argument("--layers", nargs="+", type=int, default=list(layers), help="student layers (of the teacher's 6)")
    p.add_argument("--recipes", nargs="+", choices=recipe_choices, default=list(recipes))
    p.add_argument("--seeds", type=int, default=seeds, help="number of seeds: 0 .. N-1")
    p.add_argument("--epochs", type=float, default=DEFAULT_EPOCHS, help="student epochs (key tag -e<E> if not 1)")
    p.add_argument("--max-train-samples", type=int, default=None, help="key tag -n<N>")
    p.add_argument("--max-eval-samples", type=int, default=None, help="key tag -v<N>")
    p.add_argument("--lr", type=float, default=STUDENT_LR, help="student learning rate (key tag -lr<LR> if not 1e-4)")
    p.add_argument("--threads", type=int, default=None, help="torch threads, training and latency (key tag -t<T>)")
    add_mode_flags(p)
    return p


def add_mode_flags(p: argparse.ArgumentParser) -> None:
    """--dry-run, --table-only and --markdown: what `suite_main` reads; every suite takes them."""
    p.add_argument("--dry-run", action="store_true", help="check every config, print the plan; run nothing")
    p.add_argument("--table-only", action="store_true", help="print the table from the stored JSON; run nothing")
    p.add_argument("--markdown", type=Path, default=None, metavar="FILE", help="also write the table to FILE")


def suite_main(args: argparse.Namespace, runs: list[Run], title: str, render=None, after=None) -> int:
    """What every suite does once it has its plan: table only, dry run, or run what is missing.
    `render()` gives the table text (default: `table` with `title`); `after` goes to `run_one`."""
    failed = []
    if not args.table_only:
        validate(runs)
        if args.dry_run:
            print_plan(runs)
            return 0
        failed = execute(runs, after)
        print()
    text = render() if render else table(runs, title, Options.from_args(args))
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
        print(f"\ntable written to {args.markdown}")
    if failed:
        print(f"\n{len(failed)} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
