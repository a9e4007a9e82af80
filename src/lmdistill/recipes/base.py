"""Recipes and stages.

A recipe is data plus a loss. It declares ordered `Stage`s; each stage says which network runs
with gradients (the student, or the teacher for a teacher-side stage such as TED's filter
learning), which extra modules train with it (projections, filters, heads), whether the backbone
is frozen, whether the frozen teacher runs alongside, and the loss:

    loss(student: Features, teacher: Features | None, batch: dict) -> (loss tensor, {name: float})

The trainer runs stages one by one and knows no method by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import nn

from lmdistill.config import ExperimentConfig, RecipeConfig
from lmdistill.errors import ConfigError
from lmdistill.models.features import Features

LossFn = Callable[[Features, "Features | None", dict], "tuple[torch.Tensor, dict[str, float]]"]


@dataclass
class Stage:
    name: str
    loss: LossFn
    net: Literal["student", "teacher"] = "student"  # which network runs with gradients
    modules: dict[str, nn.Module] = field(default_factory=dict)  # extra modules trained in this stage
    train_backbone: bool = True  # False: only `modules` train; the network's own weights are frozen
    uses_teacher: bool = True  # run the frozen teacher on every batch and pass its Features to `loss`
    output_attentions: bool = False
    epochs: float | None = None  # None: training.epochs
    learning_rate: float | None = None  # None: training.learning_rate


@dataclass
class RecipeContext:
    """What a recipe may read when it declares its stages."""

    config: ExperimentConfig
    task: Any  # lmdistill.tasks.Task
    teacher: nn.Module | None  # frozen, task head trained
    student: nn.Module

    @property
    def teacher_layers(self) -> int:
        return self.teacher.config.num_hidden_layers

    @property
    def student_layers(self) -> int:
        return self.student.config.num_hidden_layers

    @property
    def teacher_width(self) -> int:
        return self.teacher.config.hidden_size

    @property
    def student_width(self) -> int:
        return self.student.config.hidden_size


class Recipe:
    """Subclass with `name`, `settings_class`, and `stages()`."""

    name: str = ""
    settings_class: type[RecipeConfig] = RecipeConfig
    needs_teacher: bool = True
    needs_token_alignment: bool = False  # True: the loss compares per-token teacher/student states

    def __init__(self, settings: RecipeConfig, context: RecipeContext):
        self.settings = settings
        self.context = context

    def stages(self) -> list[Stage]:
        raise NotImplementedError

    def extra_outputs(self) -> dict[str, nn.Module]:
        """Modules to save next to the student for inspection (TED filters, projections)."""
        return {}


def task_loss(features: Features) -> torch.Tensor:
    if features.task_loss is None:
        raise ConfigError("recipe: this stage needs labels, but the batch has none")
    return features.task_loss


def logit_kd(task, student: Features, teacher: Features, temperature: float) -> torch.Tensor:
    """Temperature KD averaged over the task's logit pairs (one for classification, start+end for QA)."""
    from lmdistill.losses import kd_kl

    pairs = task.logit_pairs(student.logits, teacher.logits, student)
    return sum(kd_kl(s, t, temperature) for s, t in pairs) / len(pairs)


LayerMapSpec = Literal["uniform", "last"] | list[tuple[int, int]]


def resolve_layer_map(spec, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Turn `uniform` / `last` / explicit [[s, t], ...] into checked (student, teacher) layer pairs.

    Layers are numbered as in `hidden_states`: 0 is the embedding output, k is the output of
    transformer layer k (1-based). `uniform` maps student layer k to teacher layer round(k * T / S).
    """
    if spec == "uniform":
        pairs = [(k, round(k * teacher_layers / student_layers)) for k in range(1, student_layers + 1)]
    elif spec == "last":
        pairs = [(student_layers, teacher_layers)]
    else:
        pairs = [tuple(int(x) for x in pair) for pair in spec]
    if not pairs:
        raise ConfigError("recipe.layer_map: empty")
    for pair in pairs:
        if len(pair) != 2:
            raise ConfigError(f"recipe.layer_map: {list(pair)} is not a [student, teacher] pair")
        s, t = pair
        if not 0 <= s <= student_layers:
            raise ConfigError(
                f"layer map: student layer {s} -> teacher layer {t}, but the student has {student_layers} layers"
            )
        if not 0 <= t <= teacher_layers:
            raise ConfigError(
                f"layer map: student layer {s} -> teacher layer {t}, but the teacher has {teacher_layers} layers"
            )
    return [tuple(p) for p in pairs]
