"""DistillationTrainer: a `transformers.Trainer` that runs one Stage.

The trained module is a `StageModel` (the network plus the stage's extra modules), so the optimizer,
DDP and checkpoints cover exactly what trains. The teacher is held beside it: frozen, in eval mode,
outside the optimizer and outside DDP. The trainer calls the stage's loss and knows no method by name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import defaultdict
from pathlib import Path

import safetensors.torch
import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import get_last_checkpoint

from lmdistill.config import ExperimentConfig
from lmdistill import killpoint
from lmdistill.errors import ConfigError, TrainingError
from lmdistill.models.features import Features, features_from_output
from lmdistill.recipes.base import Stage

logger = logging.getLogger("lmdistill")
STATE_FILE = "stage_state.safetensors"
DONE_FILE = "done.json"


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
        output = self.net(**batch, output_hidden_states=True, output_attentions=self.stage.output_attentions)
        student = features_from_output(output, batch)
        loss, logs = self.stage.loss(student, teacher, batch)
        return {"loss": loss, "logs": logs}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What this stage changed: the extras, plus the backbone when it trained."""
        state = {f"extras.{k}": v for k, v in self.extras.state_dict().items()}
        if self.stage.train_backbone:
            state.update({f"net.{k}": v for k, v in self.net.state_dict().items()})
        return state


def save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    # Tied weights (e.g. input/output embeddings) share storage; safetensors wants each stored once.
    seen, unique = {}, {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen[key] = name
        unique[name] = tensor.detach().contiguous().cpu()
    tmp = path.with_name(f".tmp-{path.name}")
    safetensors.torch.save_file(unique, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def load_state(model: StageModel, path: Path) -> None:
    state = safetensors.torch.load_file(str(path))
    model.load_state_dict(state, strict=False)


class EpochSeededLengthSampler(LengthGroupedSampler):
    """`group_by_length` order as a function of (seed, epoch) alone.

    HF's LengthGroupedSampler draws its permutation from the global torch RNG when an epoch starts,
    so the order of epoch e depends on every random draw of epochs 0..e-1 (dropout): a run resumed
    inside epoch e >= 1 would see another order than the uninterrupted run. Seeding per epoch makes
    the order the same whether the run was interrupted or not.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer (through accelerate) before each epoch
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class DistillationTrainer(Trainer):
    loss_is_scaled_for_ga = False  # our loss is a per-batch mean

    def __init__(self, *args, teacher: nn.Module | None = None, stage: Stage, label_keys=("labels",), **kwargs):
        super().__init__(*args, **kwargs)
        self.stage = stage
        self.label_keys = tuple(label_keys)
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
            teacher.to(self.args.device)
        self._log_sums: dict[str, float] = defaultdict(float)
        self._log_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        teacher_features = None
        if self.teacher is not None and self.stage.uses_teacher:
            teacher_inputs = {k: v for k, v in inputs.items() if k not in self.label_keys}
            with torch.no_grad():
                self.teacher.eval()
                output = self.teacher(
                    **teacher_inputs, output_hidden_states=True, output_attentions=self.stage.output_attentions
                )
            teacher_features = features_from_output(output, inputs)
        result = model(batch=inputs, teacher=teacher_features)
        loss = result["loss"]
        if not torch.isfinite(loss.detach()).all():
            raise TrainingError(
                f"stage '{self.stage.name}': the loss is {loss.item()} at step {self.state.global_step + 1}; "
                "lower training.learning_rate or check the data"
            )
        for name, value in result["logs"].items():
            self._log_sums[name] += float(value)
        self._log_count += 1
        return (loss, result) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._log_count and "loss" in logs:
            for name, total in self._log_sums.items():
                logs[f"loss_{name}"] = round(total / self._log_count, 6)
            self._log_sums.clear()
            self._log_count = 0
        super().log(logs, start_time)

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthSampler(sampler.batch_size, sampler.lengths, seed)
        return sampler

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        killpoint.hit("step")
        return loss

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        # Checkpoints of a StageModel: one safetensors file, tied weights stored once.
        if not self.args.should_save:
            return
        output_dir = Path(output_dir or self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        save_state(model.state_dict(), output_dir / "model.safetensors")


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
    return TrainingArguments(
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


def run_stage(stage: Stage, index: int, net: nn.Module, teacher: nn.Module | None, train_dataset, collator,
              config: ExperimentConfig, stage_root: Path, label_keys, resume: bool, **arg_overrides) -> dict:
    """Train one stage (or load it if already done). Returns its summary (steps, final loss)."""
    stage_dir = stage_root / f"{index:02d}-{stage.name}"
    model = StageModel(net, stage)
    done = stage_dir / DONE_FILE
    if done.is_file():
        load_state(model, stage_dir / STATE_FILE)
        logger.info("stage %s already finished; loaded its result from %s", stage.name, stage_dir)
        return json.loads(done.read_text())
    args = training_arguments(config, stage, stage_dir, **arg_overrides)
    trainer = DistillationTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=collator,
        teacher=teacher if stage.uses_teacher else None,
        stage=stage,
        label_keys=label_keys,
    )
    checkpoint = get_last_checkpoint(str(stage_dir)) if (resume and stage_dir.is_dir()) else None
    if checkpoint:
        logger.info("stage %s: resuming from %s", stage.name, checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "stage": stage.name,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "loss_curve": [(entry["step"], entry["loss"]) for entry in history],
    }
    if trainer.is_world_process_zero():
        save_state(model.trainable_state_dict(), stage_dir / STATE_FILE)
        (stage_dir / DONE_FILE).write_text(json.dumps(summary, indent=2))
        # The stage result is saved; its full checkpoints (weights + optimizer) are no longer needed.
        for checkpoint in stage_dir.glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    net.eval()
    return summary
