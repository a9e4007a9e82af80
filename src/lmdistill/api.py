"""`distill(config) -> Result`: the one entry point; the CLI calls it too.

Flow: config -> task -> teacher (fine-tuned once and cached when its head is untrained) ->
student -> recipe stages, each run by DistillationTrainer -> student saved atomically as a plain
HF folder -> teacher and student evaluated and measured the same way -> report files.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import set_seed

from lmdistill import bench
from lmdistill.config import ExperimentConfig, config_to_dict, load_config
from lmdistill.errors import ConfigError
from lmdistill.io_utils import atomic_dir, atomic_write_json, hash_files, hash_json
from lmdistill.models.students import build_student
from lmdistill.models.teacher import (
    default_cache_dir,
    freeze,
    load_config_of,
    load_model,
    load_tokenizer,
    resolve_teacher,
)
from lmdistill.recipes import RecipeContext, Stage, recipe_class
from lmdistill.recipes.base import task_loss
from lmdistill.report import retention, speedups, write_report
from lmdistill.tasks import Task, build_task
from lmdistill.trainer import run_stage, world_size

logger = logging.getLogger("lmdistill")


@dataclass
class Result:
    report: dict
    output: Path
    student_dir: Path
    report_paths: dict[str, Path]


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _data_fingerprint(task: Task, config: ExperimentConfig) -> str:
    """Hash of the training data: file bytes for local files, the name for hub datasets."""
    from lmdistill.tasks.io import resolve_path

    path = resolve_path(config.task.train, config.search_dirs)
    return hash_files([path]) if path is not None and path.is_file() else hash_json(config.task.train)


def _weights_fingerprint(source: str) -> str:
    folder = Path(source)
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) if folder.is_dir() else []
    return hash_files(files) if files else hash_json(source)


def load_teacher(config: ExperimentConfig, task: Task, cache_dir: Path, needs_attentions: bool):
    """Load the teacher as given (its task head may be untrained). Cheap; writes nothing but the
    one-time GGUF conversion. Returns (teacher, tokenizer, source folder, whether it needs fine-tuning)."""
    source = resolve_teacher(config.teacher, cache_dir)
    tokenizer = load_tokenizer(source)
    task.bind(load_config_of(source))
    attn = "eager" if needs_attentions else None
    teacher, missing = load_model(task.auto_class(), source, task.model_kwargs(), attn)
    needs_finetune = config.teacher.finetune == "always" or (
        config.teacher.finetune == "auto" and (bool(missing) or not task.head_is_trained(teacher))
    )
    return teacher, tokenizer, source, needs_finetune


def teacher_cache_key(config: ExperimentConfig, task: Task, source: str) -> str:
    """Hash of the teacher weights, the training data and what shapes the teacher's training."""
    settings = {
        "task": config.task.model_dump(mode="json", exclude={"train", "eval", "max_eval_samples"}),
        "teacher": config.teacher.model_dump(mode="json", exclude={"path", "gguf_file", "finetune"}),
        # Only what shapes the teacher's training: not the student's seed, epochs, steps or logging.
        "training": config.training.model_dump(mode="json", include={
            "batch_size", "weight_decay", "warmup_ratio", "lr_scheduler", "max_grad_norm",
            "gradient_accumulation_steps", "group_by_length", "bf16"}),
    }
    return hash_json([_weights_fingerprint(source), _data_fingerprint(task, config), settings])[:16]


def finetune_teacher(teacher, tokenizer, source: str, config: ExperimentConfig, task: Task, cache_dir: Path,
                     needs_attentions: bool):
    """Fine-tune the teacher on the task once; the result is cached on disk, keyed by
    `teacher_cache_key`. Returns (teacher, folder, info)."""
    key = teacher_cache_key(config, task, source)
    cached = cache_dir / "teachers" / key
    info = {"source": config.teacher.path, "finetuned": True, "reused_cache": False, "cache_key": key,
            "cache_dir": str(cached)}
    if (cached / "config.json").is_file():
        logger.info("reusing the cached fine-tuned teacher %s (key %s)", cached, key)
        attn = "eager" if needs_attentions else None
        teacher, _ = load_model(task.auto_class(), str(cached), {}, attn)
        info["reused_cache"] = True
        return teacher, str(cached), info
    logger.info("the teacher has no trained head for this task: fine-tuning it first (cached as %s)", key)
    stage = Stage("teacher-finetune", lambda s, t, b: (task_loss(s), {"task": task_loss(s).detach()}),
                  teacher_needs=None)
    run_stage(
        stage, 0, teacher, None, task.train_dataset(tokenizer, teacher.config), task.collator(tokenizer), config,
        cache_dir / "teachers" / f"{key}.work", task.label_keys, resume=True,
        batch_size=config.teacher.batch_size, epochs=config.teacher.epochs,
        learning_rate=config.teacher.learning_rate, max_steps=-1, seed=config.teacher.seed,
    )
    if is_main_process():
        with atomic_dir(cached) as tmp:
            teacher.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        shutil.rmtree(cache_dir / "teachers" / f"{key}.work", ignore_errors=True)
    barrier()
    return teacher, str(cached), info


def check_vocabularies(teacher_tok, student_tok, recipe) -> None:
    if recipe.needs_teacher and teacher_tok.get_vocab() != student_tok.get_vocab():
        what = "compares teacher and student token by token" if recipe.needs_token_alignment else (
            "feeds the teacher and the student the same token ids")
        raise ConfigError(
            f"student.path: the student's vocabulary ({len(student_tok)} tokens) differs from the teacher's "
            f"({len(teacher_tok)} tokens); recipe '{recipe.name}' {what} and needs one tokenizer"
        )


def check_output(output: Path, resume: bool, overwrite: bool) -> None:
    if output.exists() and any(output.iterdir()) and not (resume or overwrite):
        raise ConfigError(f"output: {output} already exists; pass --resume to continue it, or --overwrite")


def prepare_output(output: Path, resume: bool, overwrite: bool) -> None:
    if overwrite and not resume and output.exists() and is_main_process():
        shutil.rmtree(output)
    barrier()
    output.mkdir(parents=True, exist_ok=True)


def evaluate_and_measure(models: dict, task: Task, config: ExperimentConfig, seq_len: int, threads: int) -> dict:
    """Score and measure models the same way. models: {role: (model, folder, tokenizer)}.
    Latency is measured side by side (bench.compare_latency), the rest per model."""
    entries = {}
    for role, (model, folder, tokenizer) in models.items():
        scores = task.evaluate(model, tokenizer, config.training.eval_batch_size, desc=f"eval {role}")
        entry = {"metric": scores["metric"], "score": scores["score"], "metrics": scores,
                 "params": bench.count_parameters(model), "latency_ms": {}, "peak_mem_mb": None}
        if config.bench.enabled:
            entry.update(bench.static_figures(model, folder, task.auto_class(), _batch_maker(task, tokenizer, model),
                                              config.bench.batch_sizes, seq_len, threads, config.bench.memory))
        entries[role] = entry
    if config.bench.enabled:
        latency = bench.compare_latency(
            {role: (model, _batch_maker(task, tokenizer, model)) for role, (model, _, tokenizer) in models.items()},
            config.bench.batch_sizes, seq_len, config.bench.repeats, config.bench.warmup, threads,
            config.bench.rounds)
        for role in models:
            entries[role]["latency_ms"] = latency[role]
    return entries


def _batch_maker(task: Task, tokenizer, model):
    return lambda batch_size, seq_len: task.bench_batch(tokenizer, batch_size, seq_len, model.config)


def recipe_context(config: ExperimentConfig, task: Task, teacher, student, tokenizer, source: str) -> RecipeContext:
    """What a recipe sees; the pretrained teacher (before task fine-tuning) is loaded only if asked for."""
    loaded = {}

    def load_pretrained_teacher():
        if "model" not in loaded:
            loaded["model"] = freeze(load_model(task.auto_class(), source, task.model_kwargs())[0])
        return loaded["model"]

    return RecipeContext(config=config, task=task, teacher=teacher, student=student, tokenizer=tokenizer,
                         load_pretrained_teacher=load_pretrained_teacher, pretrained_teacher_id=f"pretrained:{source}")


def distill(config: ExperimentConfig | str | Path | dict, resume: bool = False, overwrite: bool = False,
            overrides: list[str] | None = None) -> Result:
    """Run one experiment end to end. Returns the report and the output paths."""
    if not isinstance(config, ExperimentConfig):
        config = load_config(config, overrides)
    output = Path(config.output)
    if world_size() > 1:
        # Under torchrun: join the process group now, so every rank checks the output folder
        # before any rank creates it (barrier() below is then real).
        from accelerate import PartialState

        PartialState()
    check_output(output, resume, overwrite)
    barrier()
    if config.training.num_threads:
        torch.set_num_threads(config.training.num_threads)
    cache_dir = default_cache_dir(config.cache_dir)
    set_seed(config.training.seed)

    # 1. Everything that can be checked is checked before anything is written or trained:
    #    data, teacher, student, and the recipe (layer maps, widths, filter counts, vocabularies).
    task = build_task(config.task, config.search_dirs)
    rcls = recipe_class(config.recipe.name)
    needs_attentions = getattr(rcls, "needs_attentions", False)
    teacher, tokenizer, source, needs_finetune = load_teacher(config, task, cache_dir, needs_attentions)
    load_pretrained = lambda: load_model(task.auto_class(), source, task.model_kwargs())[0]  # noqa: E731
    student, description = build_student(config.student, teacher, load_pretrained, task.auto_class(),
                                         task.model_kwargs(), tokenizer)
    student_tokenizer = load_tokenizer(config.student.path, "student.path") if config.student.path else tokenizer
    recipe = rcls(config.recipe, recipe_context(config, task, teacher, student, tokenizer, source))
    check_vocabularies(tokenizer, student_tokenizer, recipe)
    general = None
    if config.student.general is not None:  # its corpus is read and checked here, before anything is written
        from lmdistill.general import general_stage

        general = general_stage(config.student.general, recipe_context(config, task, teacher, student, tokenizer,
                                                                       source))

    # 2. The teacher gets a trained task head (fine-tuned once, then cached), and is frozen.
    prepare_output(output, resume, overwrite)
    teacher_dir, teacher_info = source, {"source": config.teacher.path, "finetuned": False}
    if needs_finetune:
        set_seed(config.teacher.seed)
        teacher, teacher_dir, teacher_info = finetune_teacher(teacher, tokenizer, source, config, task, cache_dir,
                                                              needs_attentions)
    freeze(teacher)

    # 3. The student and the recipe, built from the teacher as the recipe will use it.
    set_seed(config.training.seed)
    if needs_finetune and config.student.path is None and config.student.config is None:
        student, description = build_student(config.student, teacher, load_pretrained, task.auto_class(),
                                             task.model_kwargs(), tokenizer)
    set_seed(config.training.seed)
    recipe = rcls(config.recipe, recipe_context(config, task, teacher, student, tokenizer, source))
    logger.info("student: %s, %.1fM parameters", description, bench.count_parameters(student) / 1e6)

    if is_main_process():
        atomic_write_json(output / "config.json", config_to_dict(config))
    train_dataset = task.train_dataset(student_tokenizer, student.config)
    collator = task.collator(student_tokenizer)
    # A student that reads further than the teacher's positions (efficient attention) gets a teacher
    # that reads its batches in windows, outputs merged per token.
    stage_teacher = task.distillation_teacher(teacher, tokenizer, student.config)
    stages, overrides = recipe.stages(), {}
    if general is not None:  # task-agnostic distillation on raw text first
        stages, overrides = [general, *stages], {id(general): {"batch_size": config.student.general.batch_size}}
    summaries = []
    for index, stage in enumerate(stages, start=1):
        net = student if stage.net == "student" else stage_teacher
        summaries.append(run_stage(stage, index, net, stage_teacher if recipe.needs_teacher else None,
                                   train_dataset, collator, config, output / "stages", task.label_keys, resume,
                                   **overrides.get(id(stage), {})))
        if stage.net == "teacher":
            freeze(teacher)

    student_dir = output / "student"
    if is_main_process():
        with atomic_dir(student_dir) as tmp:
            student.save_pretrained(tmp)
            student_tokenizer.save_pretrained(tmp)
        extras = recipe.extra_outputs()
        for name, module in extras.items():
            (output / "extras").mkdir(exist_ok=True)
            state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(state, str(output / "extras" / f"{name}.safetensors"))
    barrier()
    if not is_main_process():
        return Result({}, output, student_dir, {})

    student.eval()
    threads = config.bench.num_threads or torch.get_num_threads()
    seq_len = config.bench.seq_len or task.typical_length(tokenizer, teacher.config)
    entries = evaluate_and_measure({"teacher": (teacher, teacher_dir, tokenizer),
                                    "student": (student, student_dir, student_tokenizer)},
                                   task, config, seq_len, threads)
    teacher_entry, student_entry = entries["teacher"], entries["student"]
    report = {
        "task": config.task.kind,
        "recipe": config.recipe.name,
        "teacher": teacher_entry,
        "student": student_entry,
        "retention": round(retention(student_entry["score"], teacher_entry["score"], task.higher_is_better), 4),
        "speedup": speedups(teacher_entry, student_entry),
        "higher_is_better": task.higher_is_better,
        "student_description": description,
        "teacher_info": teacher_info,
        "bench": {"seq_len": seq_len, "threads": threads, "batch_sizes": config.bench.batch_sizes,
                  "repeats": config.bench.repeats, "rounds": config.bench.rounds, "device": "cuda" if torch.cuda.is_available() else "cpu"},
        "stages": summaries,
        "config": config_to_dict(config),
    }
    if config.student.attention is not None and config.bench.enabled:
        report["cost_vs_length"] = cost_against_length(config, task, teacher, student, tokenizer, threads, output)
    paths = write_report(report, output)
    return Result(report, output, student_dir, paths)


def cost_against_length(config: ExperimentConfig, task: Task, teacher, student, tokenizer, threads: int,
                        output: Path) -> list[dict]:
    """An efficient student's cost at growing lengths, beside the teacher (positions extended by copying;
    SDPA and eager attention) and a full-attention model of the student's size (lmdistill/cost.py).
    Writes cost_vs_length.{json,md,png} into the output folder; returns the rows."""
    from lmdistill import cost
    from lmdistill.models import efficient

    longest = efficient.positions(student.config)
    lengths = config.bench.lengths
    if lengths is None:
        lengths = [n for n in (512 * 2**k for k in range(8)) if n <= longest] or [longest]
    lengths = [n for n in lengths if n <= longest]
    if not lengths:
        return []
    settings = {"max_length": max(lengths)}
    long_teacher = efficient.convert(teacher, settings, "full", tokenizer).eval()
    twin = efficient.full_twin(student, teacher)
    name = config.student.attention.type
    models = [cost.CostModel("teacher, full (sdpa)", long_teacher, "sdpa"),
              cost.CostModel("teacher, full (eager)", long_teacher, "eager"),
              cost.CostModel("full-attention student (sdpa)", twin, "sdpa"),
              cost.CostModel("full-attention student (eager)", twin, "eager"),
              cost.CostModel(f"student ({name})", student)]
    rows = cost.measure(models, lengths, lambda n: task.bench_batch(tokenizer, 1, n, student.config), threads,
                        config.bench.repeats, config.bench.rounds, config.bench.memory, output)
    cost.write(rows, output, reference="full-attention student (eager)",
               title=f"cost against length, batch 1 ({'cuda' if torch.cuda.is_available() else 'cpu'})")
    return rows


def evaluate_model(model_path: str, config: ExperimentConfig) -> dict:
    """`lmdistill eval`: score and measure one saved model on the config's task."""
    task = build_task(config.task, config.search_dirs)
    tokenizer = load_tokenizer(model_path, "MODEL")
    task.bind(load_config_of(model_path))
    model, missing = load_model(task.auto_class(), model_path, {}, key="MODEL")
    if missing:
        raise ConfigError(f"MODEL: {model_path} has no trained head for this task ({len(missing)} weights missing)")
    model.eval()
    threads = config.bench.num_threads or torch.get_num_threads()
    seq_len = config.bench.seq_len or task.typical_length(tokenizer, model.config)
    entry = evaluate_and_measure({"model": (model, model_path, tokenizer)}, task, config, seq_len, threads)["model"]
    entry["bench"] = {"seq_len": seq_len, "threads": threads}
    return entry
