"""Recipes and stages.

A recipe is data plus a loss. It declares ordered `Stage`s; each stage says which network runs
with gradients (the student, or the teacher for a teacher-side stage such as TED's filter
learning), which extra modules train with it (projections, filters, heads), whether the backbone
is frozen, what it reads of each network (`Needs`: logits, hidden states at given layers,
attentions; the trainer asks the models for exactly that, and the teacher-output cache stores
exactly that), which data it trains on (`StageData`; default the task's labeled data), whether
labels may be seen at all, which teacher runs alongside (none, the pipeline's, or its own), and
the loss:

    loss(student: Features, teacher: Features | None, batch: dict) -> (loss tensor, {name: tensor})

Log values are detached tensors: the trainer averages them on the device and reads them only at
the logging interval (no host sync per step). The trainer runs stages one by one and knows no
method by name.
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


@dataclass(frozen=True)
class Needs:
    """What a stage's loss reads of one network's forward pass; the trainer asks for nothing more.

    logits:        the output logits (task logits, or LM logits over the vocabulary).
    hidden_states: indices into HF's `hidden_states` (0 = embeddings, k = output of layer k), or "all".
    attentions:    per-layer attention probabilities (forces eager attention).
    temperature:   the temperature the loss reads the logits at. Only a top-k teacher-output cache uses
                   it: the tail bucket's mass depends on it (see lmdistill.cache).
    """

    logits: bool = True
    hidden_states: tuple[int, ...] | Literal["all"] = ()
    attentions: bool = False
    temperature: float = 1.0

    def __post_init__(self):
        if self.hidden_states != "all":
            object.__setattr__(self, "hidden_states", tuple(sorted({int(i) for i in self.hidden_states})))

    @property
    def wants_hidden(self) -> bool:
        return self.hidden_states == "all" or bool(self.hidden_states)

    def layers(self, num_layers: int) -> tuple[int, ...]:
        """The hidden_states indices needed, for a network with `num_layers` transformer layers."""
        return tuple(range(num_layers + 1)) if self.hidden_states == "all" else self.hidden_states


LOGITS_ONLY = Needs()


@dataclass
class StageData:
    """A stage's own training data; by default a stage reads the task's labeled training set.

    dataset:  tokenized `datasets.Dataset` whose columns are model inputs (and labels, if any).
    collator: pads a list of rows into a batch.
    name:     shown in logs and part of the teacher-output cache key (e.g. "task", "corpus").
    static:   the teacher sees the same inputs for an example in every epoch (False for inputs that are
              re-randomised per batch, such as MLM masking): only static data can be cached.
    """

    dataset: Any
    collator: Callable
    name: str = "task"
    static: bool = True


@dataclass
class Stage:
    """One training stage of a recipe. See the module docstring."""

    name: str
    loss: LossFn
    net: Literal["student", "teacher"] = "student"  # which network runs with gradients
    modules: dict[str, nn.Module] = field(default_factory=dict)  # extra modules trained in this stage
    train_backbone: bool = True  # False: only `modules` train; the network's own weights are frozen
    student_needs: Needs = LOGITS_ONLY  # what the loss reads of the trained network's forward pass
    teacher_needs: Needs | None = LOGITS_ONLY  # None: the frozen teacher does not run in this stage
    data: StageData | None = None  # None: the task's (labeled) training data
    labels: bool = True  # False: label keys are removed from every batch before anything sees it
    teacher: nn.Module | None = None  # None: the pipeline's teacher (e.g. a recipe's pretrained teacher instead)
    teacher_id: str | None = None  # identity of an overriding teacher, for the teacher-output cache key
    student_forward: Callable | None = None  # (net, batch, needs) -> Features; None: one plain forward
    teacher_forward: Callable | None = None  # (teacher, batch, needs) -> Features, run under no_grad (and by
    #                                          the teacher-output cache's pass); None: one plain forward
    cache_teacher: bool = True  # False: the teacher always runs live, even with training.cache_teacher: a
    #                             teacher_forward returning Features.extras (attention scores), which the cache
    #                             does not store, or a KL at a high temperature over a vocabulary, which a
    #                             top-k cache approximates badly
    epochs: float | None = None  # None: training.epochs
    learning_rate: float | None = None  # None: training.learning_rate

    @property
    def uses_teacher(self) -> bool:
        return self.teacher_needs is not None


@dataclass
class RecipeContext:
    """What a recipe may read when it declares its stages."""

    config: ExperimentConfig
    task: Any  # lmdistill.tasks.Task
    teacher: nn.Module | None  # frozen, task head trained
    student: nn.Module
    tokenizer: Any = None  # the teacher's (= the student's) tokenizer
    load_pretrained_teacher: Callable[[], nn.Module] | None = None  # the teacher before task fine-tuning
    pretrained_teacher_id: str | None = None  # its identity (source folder), for the teacher-output cache

    @property
    def search_dirs(self) -> list:
        return self.config.search_dirs

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

    @classmethod
    def prepare_student(cls, student: nn.Module, config: ExperimentConfig) -> nn.Module:
        """The student this recipe trains, from the one the config built (default: unchanged). Called
        before anything is written; e.g. lad swaps in the prunable class with the same weights."""
        return student

    def stages(self) -> list[Stage]:
        raise NotImplementedError

    def extra_outputs(self) -> dict[str, nn.Module]:
        """Modules to save next to the student for inspection (TED filters, projections)."""
        return {}

    def student_tokenizer(self, tokenizer):
        """The tokenizer saved with the student and used to evaluate it, after the stages ran
        (GLMD: the compressed vocabulary's); default the teacher's."""
        return tokenizer


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
