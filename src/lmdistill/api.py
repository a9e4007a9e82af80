"""`distill(config) -> Result`: the one entry point; the CLI calls it too.

Flow: config -> task -> teacher (fine-tuned once and cached when its head is untrained) ->
student -> recipe stages, each run by DistillationTrainer -> student saved atomically as a plain
HF folder -> teacher and student evaluated and measured the same way -> report files.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import set_seed

from lmdistill import __version__, bench, killpoint
from lmdistill import cache as teacher_cache
from lmdistill.checkpointing import remove_dir, remove_leftovers
from lmdistill.config import ExperimentConfig, config_to_dict, load_config
from lmdistill.errors import ConfigError
from lmdistill.io_utils import (
    SEAL,
    atomic_dir,
    file_fingerprint,
    file_lock,
    files_fingerprint,
    hash_json,
    read_seal,
    seal_dir,
)
from lmdistill.models.students import build_student
from lmdistill.models.teacher import (
    default_cache_dir,
    freeze,
    hub_commit,
    load_config_of,
    load_model,
    load_tokenizer,
    resolve_teacher,
)
from lmdistill.recipes import RecipeContext, Stage, recipe_class
from lmdistill.recipes.base import task_loss
from lmdistill.report import retention, speedups, write_report
from lmdistill.run_folder import (
    check_output,
    config_hash,
    data_hashes,
    prepare_output,
    record_stage,
)
from lmdistill.tasks import Task, build_task
from lmdistill.trainer import run_stage, stage_is_done, training_arguments, world_size

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


TEACHER_CACHE_FORMAT = 2  # bump when lmdistill changes how a teacher is fine-tuned (2: epoch-seeded data order)
_NOT_WEIGHTS = ("README", "LICENSE", ".git", SEAL)  # files of a model folder that cannot change the model


def _data_fingerprint(config: ExperimentConfig, memo_dir: Path | None) -> str:
    """Hash of the training data: file bytes for local files, the name for hub datasets."""
    from lmdistill.tasks.io import resolve_path

    path = resolve_path(config.task.train, config.search_dirs)
    return file_fingerprint(path, memo_dir) if path is not None and path.is_file() else hash_json(config.task.train)


def teacher_fingerprint(source: str, revision: str | None, memo_dir: Path | None) -> dict:
    """What identifies the teacher's files: the commit of a hub teacher, or the content of every file of
    a local folder (weights, config.json, tokenizer files; a converted GGUF's folder is named by the
    GGUF's content, and its files are hashed as well)."""
    commit = hub_commit(source, revision)
    if commit is not None or not Path(source).is_dir():
        return {"hub": source, "commit": commit}
    files = [p for p in Path(source).iterdir() if p.is_file() and not p.name.startswith(_NOT_WEIGHTS)]
    return {"files": files_fingerprint(files, memo_dir)}


def teacher_load_kwargs(config: ExperimentConfig, source: str) -> dict:
    """revision (pinned to a commit for hub teachers) and trust_remote_code, for every teacher load."""
    return {"revision": hub_commit(source, config.teacher.revision),
            "trust_remote_code": config.teacher.trust_remote_code}


def load_teacher(config: ExperimentConfig, task: Task, cache_dir: Path, needs_attentions: bool):
    """Load the teacher as given (its task head may be untrained). Cheap; writes nothing but the
    one-time GGUF conversion. Returns (teacher, tokenizer, source folder, whether it needs fine-tuning)."""
    source = resolve_teacher(config.teacher, cache_dir)
    if config.teacher.revision and Path(source).exists():
        raise ConfigError(f"teacher.revision: applies to hub teachers only; {config.teacher.path} is a local "
                          "folder or packaged teacher")
    load = teacher_load_kwargs(config, source)
    tokenizer = load_tokenizer(source, **load)
    task.bind(load_config_of(source, **load))
    task.bind_tokenizer(tokenizer)
    attn = "eager" if needs_attentions else None
    teacher, missing = load_model(task.auto_class(), source, task.model_kwargs(), attn, **load)
    needs_finetune = config.teacher.finetune == "always" or (
        config.teacher.finetune == "auto" and (bool(missing) or not task.head_is_trained(teacher))
    )
    return teacher, tokenizer, source, needs_finetune


def teacher_training_settings(config: ExperimentConfig) -> dict:
    """Every setting that shapes the teacher's fine-tuning, with the values the teacher stage uses
    (see the teacher stage in `finetune_teacher`); the student's own seed, epochs, steps, learning
    rate, logging and checkpointing are not among them."""
    train = config.training
    return {
        "epochs": config.teacher.epochs, "learning_rate": config.teacher.learning_rate,
        "batch_size": config.teacher.batch_size or train.batch_size, "seed": config.teacher.seed,
        **train.model_dump(mode="json", include={
            "weight_decay", "warmup_ratio", "lr_scheduler", "max_grad_norm", "gradient_accumulation_steps",
            "group_by_length", "bf16", "dataloader_num_workers"}),
    }


def teacher_cache_key(config: ExperimentConfig, task: Task, source: str, memo_dir: Path | None = None) -> str:
    """Hash of everything that shapes the fine-tuned teacher: its files (or hub commit), the training
    data and task settings, the training settings, trust_remote_code, and TEACHER_CACHE_FORMAT."""
    parts = {
        "format": TEACHER_CACHE_FORMAT,
        "teacher": teacher_fingerprint(source, config.teacher.revision, memo_dir),
        "trust_remote_code": config.teacher.trust_remote_code,
        "data": _data_fingerprint(config, memo_dir),
        "task": config.task.model_dump(mode="json", exclude={"train", "eval", "max_eval_samples"}),
        "training": teacher_training_settings(config),
    }
    return hash_json(parts)[:16]


def _agree(value):
    """Rank 0's value on every rank (one decision for a collective step under torchrun)."""
    if dist.is_available() and dist.is_initialized():
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def finetune_teacher(teacher, tokenizer, source: str, config: ExperimentConfig, task: Task, cache_dir: Path,
                     needs_attentions: bool):
    """Fine-tune the teacher on the task once; the result is cached on disk, keyed by
    `teacher_cache_key`. Returns (teacher, folder, info).

    Concurrent runs that need the same entry: the first takes a lock on `<key>.lock` and builds it,
    the others wait and then reuse it. An entry is written to a temporary folder, sealed (a manifest
    of its files' sizes) and renamed into place; an unsealed folder is never used. A run killed while
    fine-tuning leaves `<key>.work/` with its checkpoints, and the next run resumes from there."""
    key = teacher_cache_key(config, task, source, cache_dir / "hashes")
    teachers = cache_dir / "teachers"
    cached, work = teachers / key, teachers / f"{key}.work"
    info = {"source": config.teacher.path, "finetuned": True, "reused_cache": False, "cache_key": key,
            "cache_dir": str(cached)}
    attn = "eager" if needs_attentions else None
    load = {"trust_remote_code": config.teacher.trust_remote_code}
    lock = file_lock(teachers / f"{key}.lock", f"waiting for another run fine-tuning the same teacher ({key})")
    with lock if is_main_process() else nullcontext():
        if _agree(read_seal(cached) is not None):
            logger.info("reusing the cached fine-tuned teacher %s (key %s)", cached, key)
            info["reused_cache"] = True
            if is_main_process():
                remove_dir(work)  # a run killed after caching the teacher, before removing its work folder
        else:
            logger.info("the teacher has no trained head for this task: fine-tuning it first (cached as %s)", key)
            if is_main_process():
                remove_leftovers(teachers, key)  # of a run killed while writing this entry
            stage = with_task_forward(Stage("teacher-finetune", lambda s, t, b: (task_loss(s), {"task": task_loss(s).detach()}),
                                            teacher_needs=None), task)
            run_stage(
                stage, 0, teacher, None, task.train_dataset(tokenizer, teacher.config), task.collator(tokenizer),
                config, work, task.label_keys, resume=True,
                batch_size=config.teacher.batch_size, epochs=config.teacher.epochs,
                learning_rate=config.teacher.learning_rate, max_steps=-1, seed=config.teacher.seed,
            )
            task.mark_finetuned(teacher)
            if is_main_process():
                with atomic_dir(cached) as tmp:  # replaces an unsealed (damaged) folder, if any
                    teacher.save_pretrained(tmp)
                    killpoint.hit("teacher-cache")
                    tokenizer.save_pretrained(tmp)
                    seal_dir(tmp, {"key": key, "source": config.teacher.path})
                killpoint.hit("teacher-cached")
                remove_dir(work)
            barrier()
    # Every run goes on with the teacher as cached: the same object (weights, config, name) whether this
    # run fine-tuned it or found it, so what follows (the teacher-output cache key included) is the same.
    teacher, _ = load_model(task.auto_class(), str(cached), {}, attn, **load)
    return teacher, str(cached), info


def save_student(student, tokenizer, extras: dict, output: Path) -> None:
    """The student folder and the extra modules, each written to a temporary name and renamed into place."""
    with atomic_dir(output / "student") as tmp:
        student.save_pretrained(tmp)
        killpoint.hit("student-save")
        tokenizer.save_pretrained(tmp)
    for name, module in extras.items():
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        path = output / "extras" / f"{name}.safetensors"
        path.parent.mkdir(exist_ok=True)
        save_file(state, str(path.with_name(f".tmp-{path.name}")))
        os.replace(path.with_name(f".tmp-{path.name}"), path)
        killpoint.hit("extras-save")


def clean_interrupted_writes(output: Path) -> None:
    """Remove what a killed run's atomic writes left in the output folder (`.tmp-*`, `.old-*`)."""
    for folder in (output, output / "extras"):
        for path in folder.glob(".tmp-*") if folder.is_dir() else []:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        for path in folder.glob(".old-*") if folder.is_dir() else []:
            shutil.rmtree(path, ignore_errors=True)


def with_task_forward(stage: Stage, task: Task) -> Stage:
    """A task that provides its own forward pass (prompt classification: class scores from the LM head)
    makes it the default student and teacher forward of a stage that brings none."""
    if task.model_forward is not None:
        stage.student_forward = stage.student_forward or task.model_forward
        stage.teacher_forward = stage.teacher_forward or task.model_forward
    return stage


def check_vocabularies(teacher_tok, student_tok, recipe) -> None:
    if recipe.needs_teacher and teacher_tok.get_vocab() != student_tok.get_vocab():
        what = "compares teacher and student token by token" if recipe.needs_token_alignment else (
            "feeds the teacher and the student the same token ids")
        raise ConfigError(
            f"student.path: the student's vocabulary ({len(student_tok)} tokens) differs from the teacher's "
            f"({len(teacher_tok)} tokens); recipe '{recipe.name}' {what} and needs one tokenizer"
        )


def check_training_arguments(config: ExperimentConfig, stages: list[Stage], teacher_finetune: bool,
                             output: Path) -> None:
    """Build every stage's TrainingArguments now (this writes nothing), so that a setting transformers
    rejects stops the run before the output folder exists, not after the teacher's fine-tuning."""
    runs = [(stage, {}) for stage in stages]
    if teacher_finetune:
        runs.insert(0, (Stage("teacher-finetune", task_loss), dict(
            batch_size=config.teacher.batch_size, epochs=config.teacher.epochs,
            learning_rate=config.teacher.learning_rate, max_steps=-1, seed=config.teacher.seed)))
    for stage, overrides in runs:
        try:
            training_arguments(config, stage, output / "stages" / stage.name, **overrides)
        except ValueError as err:
            raise ConfigError(f"training: transformers rejects the settings of stage '{stage.name}': "
                              f"{str(err).strip().splitlines()[0]}") from None


def check_bench_length(config: ExperimentConfig, models: dict) -> None:
    """bench.seq_len must fit every measured model's position embeddings (models: {role: model})."""
    seq_len = config.bench.seq_len
    if not (config.bench.enabled and seq_len):
        return
    for role, model in models.items():
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions and "roberta" in str(getattr(model.config, "model_type", "")):
            positions -= int(getattr(model.config, "pad_token_id", 0) or 0) + 1  # as Task.max_length
        if positions and seq_len > positions:
            raise ConfigError(f"bench.seq_len: {seq_len} tokens is more than the {role}'s {positions} positions")


def evaluate_and_measure(models: dict, task: Task, config: ExperimentConfig, seq_len: int, threads: int) -> dict:
    """Score and measure models the same way. models: {role: (model, folder, tokenizer)}; a model is
    a PyTorch module (moved to `bench.measurement_device()`: the GPU when there is one) or an
    `export.OnnxModel` (onnxruntime on the CPU). Latency is measured side by side
    (bench.compare_latency), the rest per model; peak memory in a fresh process per model."""
    device = bench.measurement_device()
    bench.release_memory()  # e.g. the optimizer state of the last stage
    # The teacher goes last: with a teacher-output cache it never had to fit on the training GPU, and
    # one that does not fit is measured on the CPU (its entry's `device` says so) instead of failing.
    for role in sorted(models, key=lambda r: r == "teacher"):
        model = models[role][0]
        if isinstance(model, torch.nn.Module):
            try:
                model.to(device).eval()
            except torch.OutOfMemoryError:
                model.to("cpu").eval()
                bench.release_memory()
                logger.warning("the %s does not fit on %s beside the others: it is evaluated and measured on the "
                               "CPU", role, device)
    entries = {}
    for role, (model, folder, tokenizer) in models.items():
        scores = task.evaluate(model, tokenizer, config.training.eval_batch_size, desc=f"eval {role}")
        onnx = not isinstance(model, torch.nn.Module)
        entry = {"metric": scores["metric"], "score": scores["score"], "metrics": scores,
                 "params": bench.count_parameters(model), "latency_ms": {}, "peak_mem_mb": None,
                 "device": str(bench.model_device(model)), "runtime": _runtime(onnx)}
        if config.bench.enabled:
            entry.update(bench.static_figures(model, folder, "onnx" if onnx else task.auto_class(),
                                              _batch_maker(task, tokenizer, model), config.bench.batch_sizes,
                                              seq_len, threads, config.bench.memory))
        entries[role] = entry
    if config.bench.enabled:
        latency = bench.compare_latency(
            {role: (model, _batch_maker(task, tokenizer, model)) for role, (model, _, tokenizer) in models.items()},
            config.bench.batch_sizes, seq_len, config.bench.repeats, config.bench.warmup, threads,
            config.bench.rounds)
        for role in models:
            entries[role]["latency_ms"] = latency[role]
    return entries


def _runtime(onnx: bool) -> str:
    if onnx:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"
    return f"pytorch {torch.__version__}"


def check_length_bench(config: ExperimentConfig, student) -> None:
    """bench.keep_ratios / bench.length_search need a student with a prunable implementation."""
    if config.bench.enabled and (config.bench.keep_ratios or config.bench.length_search):
        from lmdistill.models.pruning import check_supported

        check_supported(student, "bench.keep_ratios" if config.bench.keep_ratios else "bench.length_search")


def _batch_maker(task: Task, tokenizer, model):
    return lambda batch_size, seq_len: task.bench_batch(tokenizer, batch_size, seq_len, model.config)


def stage_teacher_outputs(stage: Stage, teacher, train_dataset, collator, task: Task, config: ExperimentConfig,
                          cache_dir: Path):
    """The teacher-output cache reader of a stage (built or extended first when needed), or None when
    the cache is off (`training.cache_teacher: false`) or the stage cannot use it (the teacher runs live)."""
    if not config.training.cache_teacher or not stage.uses_teacher:
        return None
    if not stage.cache_teacher:
        logger.info("stage %s: the teacher runs live (the stage reads exact teacher outputs)", stage.name)
        return None
    if stage.data is not None:
        dataset, stage_collator, static = stage.data.dataset, stage.data.collator, stage.data.static
    else:
        dataset, stage_collator, static = train_dataset, collator, task.static_train_inputs
    if not static:
        logger.info("stage %s: the teacher runs live (its inputs change every epoch)", stage.name)
        return None
    stage_teacher = stage.teacher if stage.teacher is not None else teacher
    train = config.training
    return teacher_cache.prepare(stage, stage_teacher, dataset, stage_collator, cache_dir, train.cache_top_k,
                                 train.cache_dtype, train.eval_batch_size, train.cache_top_k_max_temperature)


def recipe_context(config: ExperimentConfig, task: Task, teacher, student, tokenizer, source: str) -> RecipeContext:
    """What a recipe sees; the pretrained teacher (before task fine-tuning) is loaded only if asked for."""
    loaded = {}

    def load_pretrained_teacher():
        if "model" not in loaded:
            loaded["model"] = freeze(load_model(task.auto_class(), source, task.model_kwargs(),
                                                  **teacher_load_kwargs(config, source))[0])
        return loaded["model"]

    return RecipeContext(config=config, task=task, teacher=teacher, student=student, tokenizer=tokenizer,
                         load_pretrained_teacher=load_pretrained_teacher, pretrained_teacher_id=f"pretrained:{source}")


def check_cache_settings(config: ExperimentConfig, teacher, cache_dir: Path) -> None:
    """The cache folder is writable and top-k fits the teacher's vocabulary, before anything is written."""
    vocab = getattr(teacher.config, "vocab_size", None)
    if config.training.cache_teacher and vocab and config.training.cache_top_k > vocab:
        raise ConfigError(f"training.cache_top_k: {config.training.cache_top_k} is larger than the teacher's "
                          f"vocabulary ({vocab} tokens)")
    folder = cache_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:  # a real write, not os.access: root passes permission bits, and a file system may be read-only
        if not folder.is_dir():
            raise NotADirectoryError(folder)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        key = "cache_dir" if config.cache_dir else "cache_dir (default $LMDISTILL_CACHE or ~/.cache/lmdistill)"
        raise ConfigError(f"{key}: {cache_dir} is not writable (set cache_dir to a folder you can write)") from None


def fill_stage_caches(stages: list[Stage], teacher, train_dataset, collator, task: Task, config: ExperimentConfig,
                      cache_dir: Path) -> list[dict]:
    """`lmdistill cache`: build the teacher-output cache of every stage that reads the teacher; train nothing.
    `stages` as the run trains them (task forward passes attached, the general corpus stage first)."""
    infos = []
    for stage in stages:
        outputs = stage_teacher_outputs(stage, teacher, train_dataset, collator, task, config, cache_dir)
        if stage.uses_teacher:
            infos.append({"stage": stage.name, **(outputs.info.as_dict() if outputs else {"status": "live"})})
    return infos


def fill_cache(config: ExperimentConfig | str | Path | dict, overrides: list[str] | None = None) -> list[dict]:
    """Fill the teacher-output cache for a config without training (`lmdistill cache CONFIG`); writes
    only under `cache_dir` (the fine-tuned teacher, if needed, and the outputs). Under torchrun each
    process computes its share of the rows."""
    return distill(config, overrides=overrides, cache_only=True).report["teacher_cache"]


def distill(config: ExperimentConfig | str | Path | dict, resume: bool = False, overwrite: bool = False,
            overrides: list[str] | None = None, cache_only: bool = False) -> Result:
    """Run one experiment end to end. Returns the report and the output paths. With `cache_only`,
    stop once the teacher-output cache of every stage is filled (see `fill_cache`)."""
    if not isinstance(config, ExperimentConfig):
        config = load_config(config, overrides)
    output = Path(config.output)
    if world_size() > 1:
        # Under torchrun: join the process group now, so every rank checks the output folder
        # before any rank creates it (barrier() below is then real).
        from accelerate import PartialState

        PartialState()
    previous = None
    full_config = config_to_dict(config)
    if not cache_only:
        from lmdistill.tasks.io import resolve_path

        data = data_hashes(config, lambda source: resolve_path(source, config.search_dirs))
        previous = check_output(output, resume, overwrite, full_config, data)  # --resume: same config and data
    barrier()
    if config.training.num_threads:
        torch.set_num_threads(config.training.num_threads)
    cache_dir = default_cache_dir(config.cache_dir)
    set_seed(config.training.seed)

    # 1. Everything that can be checked is checked before anything is written or trained:
    #    data, teacher, student, the recipe (layer maps, widths, filter counts, vocabularies),
    #    tokenization, every stage's training arguments and the benchmark's sequence length.
    task = build_task(config.task, config.search_dirs)
    rcls = recipe_class(config.recipe.name)
    needs_attentions = getattr(rcls, "needs_attentions", False)
    teacher, tokenizer, source, needs_finetune = load_teacher(config, task, cache_dir, needs_attentions)
    load = teacher_load_kwargs(config, source)
    load_pretrained = lambda: load_model(task.auto_class(), source, task.model_kwargs(), **load)[0]  # noqa: E731
    remote = config.teacher.trust_remote_code
    student, description = build_student(config.student, teacher, load_pretrained, task.auto_class(),
                                         task.model_kwargs(), remote, tokenizer)
    student = rcls.prepare_student(student, config)
    check_length_bench(config, student)
    student_tokenizer = load_tokenizer(config.student.path, "student.path", trust_remote_code=remote) \
        if config.student.path else tokenizer
    recipe = rcls(config.recipe, recipe_context(config, task, teacher, student, tokenizer, source))
    check_vocabularies(tokenizer, student_tokenizer, recipe)
    check_cache_settings(config, teacher, cache_dir)
    general = None
    if config.student.general is not None:  # its corpus is read and checked here, before anything is written
        from lmdistill.general import general_stage

        general = general_stage(config.student.general, recipe_context(config, task, teacher, student, tokenizer,
                                                                       source))
    # Tokenized once here (and cached by the task): a data error is raised now, not after training.
    train_dataset = task.train_dataset(student_tokenizer, student.config)
    if needs_finetune:
        task.train_dataset(tokenizer, teacher.config)
    if not cache_only:
        task.eval_dataset(tokenizer, teacher.config)
        task.eval_dataset(student_tokenizer, student.config)
    check_training_arguments(config, ([general] if general else []) + recipe.stages(), needs_finetune, output)
    check_bench_length(config, {"teacher": teacher, "student": student})

    # 2. The run starts: the output folder gets its marker and config.json (an old run folder is
    #    deleted first on --overwrite). Then the teacher gets a trained task head (fine-tuned once,
    #    then cached), and is frozen.
    run_record = None
    if not cache_only:
        if is_main_process():
            run_record = prepare_output(output, overwrite, full_config, data, previous, __version__)
            if previous is not None:
                clean_interrupted_writes(output)  # what a killed run's atomic writes left
        barrier()
        output.mkdir(parents=True, exist_ok=True)
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
                                             task.model_kwargs(), remote, tokenizer)
        student = rcls.prepare_student(student, config)
    set_seed(config.training.seed)
    recipe = rcls(config.recipe, recipe_context(config, task, teacher, student, tokenizer, source))
    logger.info("student: %s, %.1fM parameters", description, bench.count_parameters(student) / 1e6)

    collator = task.collator(student_tokenizer)
    # A student that reads further than the teacher's positions (efficient attention) gets a teacher
    # that reads its batches in windows, outputs merged per token (also in the teacher-output cache's
    # pass: a row's merged outputs depend on that row alone, and the windowing is part of the key).
    stage_teacher = task.distillation_teacher(teacher, tokenizer, student.config)
    stages, overrides = [with_task_forward(stage, task) for stage in recipe.stages()], {}
    if general is not None:  # task-agnostic distillation on raw text first
        stages, overrides = [general, *stages], {id(general): {"batch_size": config.student.general.batch_size}}
    if cache_only:
        return Result({"teacher_cache": fill_stage_caches(stages, stage_teacher, train_dataset, collator, task,
                                                          config, cache_dir)}, output, output / "student", {})
    summaries = []
    stage_hash = config_hash(full_config)
    for index, stage in enumerate(stages, start=1):
        if is_main_process():  # the folder name is run_stage's
            record_stage(output / "stages" / f"{index:02d}-{stage.name}", stage.name, stage_hash)
        net = student if stage.net == "student" else stage_teacher
        outputs = None
        if (recipe.needs_teacher or stage.teacher is not None) and not stage_is_done(output / "stages", index, stage):
            outputs = stage_teacher_outputs(stage, stage_teacher, train_dataset, collator, task, config, cache_dir)
        summary = run_stage(stage, index, net, stage_teacher if recipe.needs_teacher else None, train_dataset,
                            collator, config, output / "stages", task.label_keys, resume, teacher_outputs=outputs,
                            **overrides.get(id(stage), {}))
        summaries.append(summary)
        if stage.net == "teacher":
            freeze(teacher)

    student_dir = output / "student"
    student_tokenizer = recipe.student_tokenizer(student_tokenizer)  # e.g. GLMD's compressed vocabulary
    if is_main_process():
        save_student(student, student_tokenizer, recipe.extra_outputs(), output)
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
    if config.bench.enabled and (config.bench.keep_ratios or config.bench.length_search):
        from lmdistill.length_eval import measure_lengths

        student_entry.update(measure_lengths(student, task, student_tokenizer, config, seq_len, threads,
                                             tuple(config.bench.pruning_seq_lens)))
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
                  "repeats": config.bench.repeats, "rounds": config.bench.rounds,
                  "device": student_entry["device"]},
        "stages": summaries,
        "data": task.data_notes,  # rows skipped or repaired while reading, with counts and where
        "config": full_config,  # a --resume may have changed only the keys run_folder.RESUME_MAY_CHANGE names
        "config_hash": stage_hash,
        "runs": run_record["runs"],  # when the run started and each resume, with the keys it changed
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


def _load_for_eval(model_path: str, task: Task, key: str, trust_remote_code: bool = False):
    """A saved HF model folder, as the task's head, on the CPU; (model, tokenizer)."""
    tokenizer = load_tokenizer(model_path, key, trust_remote_code=trust_remote_code)
    task.bind(load_config_of(model_path, trust_remote_code=trust_remote_code, key=key))
    task.bind_tokenizer(tokenizer)
    model, missing = load_model(task.auto_class(), model_path, {}, key=key, trust_remote_code=trust_remote_code)
    if missing:
        raise ConfigError(f"{key}: {model_path} has no trained head for this task ({len(missing)} weights missing)")
    return model.eval(), tokenizer


def _load_onnx_for_eval(folder: str, task: Task, threads: int, key: str):
    """An `lmdistill export` folder run by onnxruntime; (OnnxModel, tokenizer). Checks that its
    head is the task's."""
    from lmdistill.export import OnnxModel, check_onnx_dependencies

    check_onnx_dependencies(key)
    tokenizer = load_tokenizer(folder, key)
    model = OnnxModel(folder, threads)
    task.bind(model.config)
    exported, wanted = model.info.get("auto_class"), task.auto_class().__name__
    if exported and exported != wanted:
        raise ConfigError(f"{key}: {folder} is an {exported} export, but task.kind '{task.kind}' needs {wanted}")
    labels = getattr(task, "labels", None)
    if labels is not None and int(model.config.num_labels) != len(labels):
        raise ConfigError(f"{key}: {folder} predicts {model.config.num_labels} labels, the task has {len(labels)}")
    return model, tokenizer


def evaluate_model(model_path: str, config: ExperimentConfig, compare_onnx: str | None = None,
                   length_config=None) -> dict:
    """`lmdistill eval`: score and measure one saved model on the config's task.

    MODEL is a saved HF folder (PyTorch, on the GPU when there is one) or an `lmdistill export`
    folder (holds model.onnx: run by onnxruntime). With `compare_onnx` (an export folder of the
    same model), both are scored and measured side by side: returns {"pytorch": entry,
    "onnx": entry, "bench": ..., "onnx_speedup": {batchN: pytorch ms / onnx ms}}.

    With `length_config` (a keep ratio or per-layer lengths, models/pruning.py) the PyTorch model runs
    pruned: a plain BERT/RoBERTa is converted to its prunable class (same weights); peak memory is
    then not measured (it loads the saved folder as it is).
    """
    from lmdistill.export import is_onnx_folder
    from lmdistill.models import pruning

    task = build_task(config.task, config.search_dirs)
    threads = config.bench.num_threads or torch.get_num_threads()
    onnx_model = is_onnx_folder(model_path)
    if length_config is not None and (onnx_model or compare_onnx is not None):
        raise ConfigError("--keep-ratio / --length-config: token pruning runs in PyTorch only, not on an ONNX export")
    if compare_onnx is not None:
        if onnx_model:
            raise ConfigError(f"--compare-onnx: MODEL {model_path} is itself an ONNX export; give the PyTorch folder")
        if not is_onnx_folder(compare_onnx):
            raise ConfigError(f"--compare-onnx: {compare_onnx} holds no model.onnx (make one with lmdistill export)")
    models = {}
    if onnx_model:
        model, tokenizer = _load_onnx_for_eval(model_path, task, threads, "MODEL")
        models["model"] = (model, model_path, tokenizer)
    else:
        model, tokenizer = _load_for_eval(model_path, task, "MODEL", config.teacher.trust_remote_code)
        if length_config is not None:
            key = "--keep-ratio" if isinstance(length_config, (int, float)) else "--length-config"
            spec = pruning.check_length_config(length_config, model.config.num_hidden_layers, key)
            pruning.check_supported(model, key, role="model")
            model = pruning.to_prunable(model, spec).eval()
            config.bench.memory = False
        models["model" if compare_onnx is None else "pytorch"] = (model, model_path, tokenizer)
    if compare_onnx is not None:
        exported, exported_tokenizer = _load_onnx_for_eval(compare_onnx, task, threads, "--compare-onnx")
        models["onnx"] = (exported, compare_onnx, exported_tokenizer)
    check_bench_length(config, {role: entry[0] for role, entry in models.items()})
    seq_len = config.bench.seq_len or task.typical_length(tokenizer, model.config)
    entries = evaluate_and_measure(models, task, config, seq_len, threads)
    bench_info = {"seq_len": seq_len, "threads": threads}
    if compare_onnx is not None:
        return {"pytorch": entries["pytorch"], "onnx": entries["onnx"], "bench": bench_info,
                "onnx_speedup": speedups(entries["pytorch"], entries["onnx"])}
    entry = {**entries["model"], "bench": bench_info}
    if pruning.is_prunable(model):
        spec = model.base_model.default_length_config()
        entry["length_config"] = list(spec) if isinstance(spec, tuple) else (spec or 1.0)
        entry["lengths"] = pruning.resolve_lengths(spec, seq_len, model.config.num_hidden_layers,
                                                   model.config.min_tokens)
    return entry
