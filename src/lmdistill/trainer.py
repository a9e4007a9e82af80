"""DistillationTrainer: a `transformers.Trainer` that runs one Stage.

The trained module is a `StageModel` (the network plus the stage's extra modules), so the optimizer,
DDP and checkpoints cover exactly what trains. The teacher is held beside it: frozen, in eval mode,
outside the optimizer and outside DDP. The trainer calls the stage's loss and knows no method by name.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import safetensors.torch
import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from lmdistill import checkpointing, killpoint
from lmdistill.config import ExperimentConfig
from lmdistill.errors import ConfigError, TrainingError
from lmdistill.io_utils import atomic_write_json
from lmdistill.models.features import Features, features_from_output
from lmdistill.recipes.base import Needs, Stage

logger = logging.getLogger("lmdistill")
STATE_FILE = "stage_state.safetensors"
DONE_FILE = "done.json"
INDEX_KEY = "_index"  # dataset row of each example in a batch: where its cached teacher outputs are


def network_forward(net: nn.Module, batch: dict, needs: Needs):
    """One forward pass that asks the model for exactly what `needs` declares, nothing more."""
    return net(**batch, output_hidden_states=needs.wants_hidden, output_attentions=needs.attentions)


class StageCollator:
    """Wraps a task collator: keeps each row's dataset index (for the teacher-output cache) out of the
    padding and puts it back as a tensor, drops bookkeeping columns (`_*`), and removes the label keys
    of a label-free stage, so nothing downstream (the model, the loss) can read a gold label."""

    def __init__(self, collator, label_keys: tuple[str, ...], keep_labels: bool):
        self.collator = collator
        self.drop = () if keep_labels else tuple(label_keys)

    def __call__(self, features: list[dict]) -> dict:
        index = [f.get(INDEX_KEY) for f in features]
        rows = [{k: v for k, v in f.items() if not k.startswith("_") and k not in self.drop} for f in features]
        batch = dict(self.collator(rows))
        for key in self.drop:
            batch.pop(key, None)  # a collator that makes labels itself (MLM) must not leak them either
        if index[0] is not None:
            batch[INDEX_KEY] = torch.tensor(index, dtype=torch.long)
        return batch


class StageModel(nn.Module):
    """The network that trains in a stage, its extra modules, and the stage's loss."""

    def __init__(self, net: nn.Module, stage: Stage):
        super().__init__()
        self.net = net
        self.extras = nn.ModuleDict(stage.modules)
        self.stage = stage
        net.requires_grad_(stage.train_backbone)
        self.extras.requires_grad_(True)

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.stage.train_backbone:
            self.net.eval()  # a frozen backbone keeps dropout off, as in evaluation
        return self

    def forward(self, batch: dict, teacher: Features | None = None):
        needs = self.stage.student_needs
        if self.stage.student_forward is not None:
            student = self.stage.student_forward(self.net, batch, needs)
        else:
            student = features_from_output(network_forward(self.net, batch, needs), batch)
        loss, logs = self.stage.loss(student, teacher, batch)
        return {"loss": loss, "logs": logs}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What this stage changed: the extras, plus the backbone when it trained."""
        state = {f"extras.{k}": v for k, v in self.extras.state_dict().items()}
        if self.stage.train_backbone:
            state.update({f"net.{k}": v for k, v in self.net.state_dict().items()})
        return state


def tied_aliases(state: dict[str, torch.Tensor]) -> set[str]:
    """Names whose tensor shares storage with an earlier name (tied weights, e.g. input/output embeddings)."""
    seen, aliases = set(), set()
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            aliases.add(name)
        seen.add(key)
    return aliases


def save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    # Tied weights share storage; safetensors wants each stored once, so aliases are left out.
    aliases = tied_aliases(state)
    unique = {name: t.detach().contiguous().cpu() for name, t in state.items() if name not in aliases}
    tmp = path.with_name(f".tmp-{path.name}")
    safetensors.torch.save_file(unique, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def load_state(model: StageModel, path: Path) -> None:
    state = safetensors.torch.load_file(str(path))
    model.load_state_dict(state, strict=False)


class DistillationTrainer(Trainer):
    """Runs one Stage. The teacher's features come from the teacher-output cache when the stage has one
    (`teacher_outputs`), else from a live forward of the frozen teacher that asks for exactly what the
    stage declares. Loss parts are summed on the device and read only at the logging interval."""

    loss_is_scaled_for_ga = False  # our loss is a per-batch mean

    def __init__(self, *args, teacher: nn.Module | None = None, stage: Stage, label_keys=("labels",),
                 teacher_outputs=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage = stage
        self.label_keys = tuple(label_keys)
        self.teacher = teacher
        self.teacher_outputs = teacher_outputs  # a cache.CachedTeacherOutputs, or None
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
            if teacher_outputs is None:  # with a cache the teacher never runs here: it may stay where it is
                teacher.to(self.args.device)
        self._log_sums: dict[str, torch.Tensor] = {}
        self._log_count = 0
        self._last_logged_step = self.state.global_step

    def teacher_features(self, inputs: dict, index: torch.Tensor | None) -> Features | None:
        needs = self.stage.teacher_needs
        if needs is None or self.teacher is None and self.teacher_outputs is None:
            return None
        if self.teacher_outputs is not None:
            return self.teacher_outputs.features(index, inputs)
        teacher_inputs = {k: v for k, v in inputs.items() if k not in self.label_keys}
        with torch.no_grad():
            self.teacher.eval()
            if self.stage.teacher_forward is not None:
                return self.stage.teacher_forward(self.teacher, teacher_inputs, needs)
            output = network_forward(self.teacher, teacher_inputs, needs)
        return features_from_output(output, inputs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        index = inputs.pop(INDEX_KEY, None)
        result = model(batch=inputs, teacher=self.teacher_features(inputs, index))
        loss = result["loss"]
        # No host sync here: the parts stay on the device until the logging interval reads them.
        for name, value in result["logs"].items():
            value = torch.as_tensor(value).detach().float()
            self._log_sums[name] = self._log_sums[name] + value if name in self._log_sums else value
        self._log_sums["_total"] = self._log_sums.get("_total", 0) + loss.detach().float()
        self._log_count += 1
        return (loss, result) if return_outputs else loss

    def read_logs(self) -> dict[str, float]:
        """Average the loss parts summed since the last read (one host sync); raise TrainingError
        naming the step range if any of them is not finite."""
        if not self._log_count:
            return {}
        names = list(self._log_sums)
        values = torch.stack([torch.as_tensor(self._log_sums[n]).to(torch.float32).reshape(()) for n in names])
        means = (values / self._log_count).tolist()
        first, last = self._last_logged_step + 1, self.state.global_step
        self._log_sums.clear()
        self._log_count = 0
        self._last_logged_step = last
        bad = sorted(((n, v) for n, v in zip(names, means) if not math.isfinite(v)), key=lambda x: x[0] != "_total")
        if bad:
            name, value = bad[0]
            where = f"at step {last}" if first >= last else f"between steps {first} and {last}"
            what = "the loss" if name == "_total" else f"the loss term '{name}'"
            raise TrainingError(
                f"stage '{self.stage.name}': {what} is {value} {where}; lower training.learning_rate or check the data"
            )
        return {n: round(v, 6) for n, v in zip(names, means) if n != "_total"}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.update({f"loss_{name}": value for name, value in self.read_logs().items()})
        super().log(logs, start_time)

    def _issue_warnings_after_load(self, load_result) -> None:
        """After a checkpoint is loaded: the only names it may lack are tied aliases, which it stores
        once (save_state). HF's own check reads PreTrainedModel attributes a StageModel lacks."""
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        missing = set(load_result.missing_keys) - tied_aliases(model.state_dict())
        if missing or load_result.unexpected_keys:
            raise TrainingError(
                f"stage '{self.stage.name}': the checkpoint does not match the model (missing "
                f"{sorted(missing)[:3]}, unexpected {list(load_result.unexpected_keys)[:3]})")

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        # Checkpoints of a StageModel: one safetensors file, tied weights stored once.
        if not self.args.should_save:
            return
        output_dir = Path(output_dir or self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        save_state(model.state_dict(), output_dir / "model.safetensors")
        killpoint.hit("checkpoint-weights")

    # ---- resume: checkpoints written whole or not at all, and a data order that survives a kill ----
    _staging: Path | None = None

    def _get_output_dir(self, trial) -> str:
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """HF's checkpoint (weights, optimizer, scheduler, RNG, trainer state), written under
        `.tmp-checkpoint-N/` and renamed into place once complete (see lmdistill.checkpointing)."""
        run_dir = Path(self.args.output_dir)
        name = f"checkpoint-{self.state.global_step}"
        staging = run_dir / f".tmp-{name}"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging = staging
        try:
            super()._save_checkpoint(model, trial)  # HF rotates inside the staging folder: a no-op
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if self.args.should_save:
            checkpointing.publish_checkpoint(staging / name, run_dir / name)
            staging.rmdir()
            checkpointing.rotate(run_dir, self.args.save_total_limit)

    def _run_epoch(self, *args, **kwargs):
        if isinstance(self.data_collator, checkpointing.SeededCollate):
            self.data_collator.epoch = kwargs["epoch"]
        return super()._run_epoch(*args, **kwargs)

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        killpoint.hit("step")  # after the backward pass, before the optimizer step
        return loss

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        killpoint.hit("checkpoint-optimizer")

    def _get_train_sampler(self, train_dataset=None):
        """group_by_length: an order that depends on (seed, epoch) only, so a resumed run sees the
        same batches (see checkpointing.EpochSeededLengthSampler). HF would read every row to learn
        its length; the lengths come from the Arrow column at once."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        if hasattr(dataset, "with_format"):
            import pyarrow.compute as pc

            table = dataset.with_format("arrow")[:]
            lengths = pc.list_value_length(table.column("input_ids")).to_pylist()
        else:
            sampler = super()._get_train_sampler(train_dataset)
            if sampler is None:  # an iterable dataset: its own order
                return None
            lengths = sampler.lengths
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return checkpointing.EpochSeededLengthSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths, seed)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def training_arguments(config: ExperimentConfig, stage: Stage, output_dir: Path, batch_size: int | None = None,
                       epochs: float | None = None, learning_rate: float | None = None,
                       max_steps: int | None = None, seed: int | None = None) -> TrainingArguments:
    train = config.training
    global_batch = batch_size or train.batch_size
    per_step = world_size() * train.gradient_accumulation_steps
    if global_batch % per_step:
        raise ConfigError(
            f"training.batch_size: {global_batch} is not divisible by processes x gradient_accumulation_steps ({per_step})"
        )
    if train.bf16 and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"training.bf16: this GPU ({torch.cuda.get_device_name()}) has no bf16 support; "
                          "set training.bf16: false")
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=global_batch // per_step,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        num_train_epochs=epochs if epochs is not None else (stage.epochs if stage.epochs is not None else train.epochs),
        max_steps=train.max_steps if max_steps is None else max_steps,
        learning_rate=learning_rate if learning_rate is not None else (
            stage.learning_rate if stage.learning_rate is not None else train.learning_rate),
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_ratio,  # a float < 1 is a ratio of the total steps
        lr_scheduler_type=train.lr_scheduler,
        max_grad_norm=train.max_grad_norm,
        seed=train.seed if seed is None else seed,
        data_seed=train.seed if seed is None else seed,
        logging_steps=train.logging_steps,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        save_only_model=False,
        eval_strategy="no",
        logging_nan_inf_filter=False,  # a per-step isnan() is a host sync; we check at the logging interval
        report_to=["tensorboard"],
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if train.group_by_length else "random",
        dataloader_num_workers=train.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        bf16=train.bf16,
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if (world_size() > 1 and not torch.cuda.is_available()) else None,
        ddp_find_unused_parameters=False if world_size() > 1 else None,
        disable_tqdm=False,
    )
    if world_size() == 1 and args.n_gpu > 1:
        # One process drives one GPU. HF would wrap the StageModel in nn.DataParallel, which cannot
        # split the teacher's Features nor gather the loss logs; several GPUs train under torchrun.
        logger.warning("%d GPUs visible to one process: training on cuda:0 only (use torchrun for all)",
                       args.n_gpu)
        args._n_gpu = 1
    return args


def stage_dir_of(stage_root: Path, index: int, stage: Stage) -> Path:
    return stage_root / f"{index:02d}-{stage.name}"


def stage_is_done(stage_root: Path, index: int, stage: Stage) -> bool:
    return (stage_dir_of(stage_root, index, stage) / DONE_FILE).is_file()


def run_stage(stage: Stage, index: int, net: nn.Module, teacher: nn.Module | None, train_dataset, collator,
              config: ExperimentConfig, stage_root: Path, label_keys, resume: bool, teacher_outputs=None,
              **arg_overrides) -> dict:
    """Train one stage (or load it if already done). Returns its summary (steps, final loss).

    The stage reads `stage.data` when it has its own, else (`train_dataset`, `collator`); the frozen
    teacher is `stage.teacher` when set, else `teacher`; `teacher_outputs` (a cache reader) replaces
    the teacher's live forward when given."""
    stage_dir = stage_dir_of(stage_root, index, stage)
    model = StageModel(net, stage)
    done = stage_dir / DONE_FILE
    if done.is_file():
        summary = json.loads(done.read_text())
        load_state(model, stage_dir / STATE_FILE)
        if int(os.environ.get("RANK", "0")) == 0:
            checkpointing.tidy_finished(stage_dir)
        logger.info("stage %s already finished; loaded its result from %s", stage.name, stage_dir)
        return summary
    if stage.data is not None:
        train_dataset, collator = stage.data.dataset, stage.data.collator
    if INDEX_KEY not in train_dataset.column_names:  # rows for the output cache and for SeededCollate
        train_dataset = train_dataset.add_column(INDEX_KEY, list(range(len(train_dataset))))
    args = training_arguments(config, stage, stage_dir, **arg_overrides)
    stage_teacher = (stage.teacher if stage.teacher is not None else teacher) if stage.uses_teacher else None
    trainer = DistillationTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=checkpointing.SeededCollate(StageCollator(collator, tuple(label_keys), stage.labels),
                                                  args.seed, INDEX_KEY),
        teacher=stage_teacher,
        teacher_outputs=teacher_outputs if stage.uses_teacher else None,
        stage=stage,
        label_keys=label_keys,
        callbacks=[LogLastStep()],
    )
    checkpoint = resume_point(trainer, stage_dir) if resume else None
    if checkpoint:
        logger.info("stage %s: resuming from %s", stage.name, checkpoint)
    compiled = config.training.torch_compile
    if compiled:
        net.compile()  # in place: parameter names, checkpoints and the saved model stay as they are
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        trainer.read_logs()  # the steps after the last logging interval are checked too
    finally:
        if compiled:
            net._compiled_call_impl = None  # evaluation and saving use the plain module again
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "stage": stage.name,
        "steps": trainer.state.global_step,
        "train_loss": curve_mean(history),
        "train_runtime_s": result.metrics.get("train_runtime"),
        "loss_curve": [(entry["step"], entry["loss"]) for entry in history],
    }
    if checkpoint:
        summary["resumed_from_step"] = int(checkpoint.name.split("-")[1])  # train_runtime_s covers the rest
    if teacher_outputs is not None:  # stored with the stage, so a finished stage's summary still says it
        summary["teacher_cache"] = teacher_outputs.info.as_dict()
    if trainer.is_world_process_zero():
        finish_stage(model, summary, stage_dir)
    trainer.accelerator.wait_for_everyone()
    net.eval()
    return summary


class LogLastStep(TrainerCallback):
    """Log the final step as well, so the loss curve covers every step of the stage."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
        return control


def curve_mean(history: list[dict]) -> float | None:
    """Mean training loss over the stage's steps, from the logged interval means (weighted by their
    length). Unlike the Trainer's own train_loss, which covers only the steps run by the current
    process, it is the same for a resumed stage as for an uninterrupted one."""
    total, steps, previous = 0.0, 0, 0
    for entry in history:
        total += entry["loss"] * (entry["step"] - previous)
        steps += entry["step"] - previous
        previous = entry["step"]
    return total / steps if steps else None


def resume_point(trainer: DistillationTrainer, stage_dir: Path) -> Path | None:
    """The newest complete checkpoint of an interrupted stage; what interrupted writes left is removed."""
    checkpoint = checkpointing.last_complete_checkpoint(stage_dir)
    trainer.accelerator.wait_for_everyone()  # every rank has chosen before rank 0 cleans up
    if trainer.args.should_save:
        checkpointing.clean_partial(stage_dir)
    trainer.accelerator.wait_for_everyone()
    return checkpoint


def finish_stage(model: StageModel, summary: dict, stage_dir: Path) -> None:
    """Save the stage result, then mark it done; a kill between the two re-enters the stage from its
    final checkpoint. The checkpoints go last: they are not needed once done.json exists."""
    save_state(model.trainable_state_dict(), stage_dir / STATE_FILE)
    killpoint.hit("stage-state")
    atomic_write_json(stage_dir / DONE_FILE, summary)
    killpoint.hit("stage-done")
    checkpointing.tidy_finished(stage_dir)
