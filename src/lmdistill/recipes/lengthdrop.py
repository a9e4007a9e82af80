"""`lengthdrop`: kd with LengthDrop, the Length-Adaptive Transformer's training (Kim & Cho, ACL 2021;
github.com/clovaai/length-adaptive-transformer, `trainer.py`), the baseline for `lad`.

The student is the prunable version of the configured student (models/pruning.py). Per step, with the
sandwich rule: the full student (no token dropped) learns the `kd` objective (teacher KD + gold
labels); then `num_sandwich + 1` pruned versions of it learn the full student's predictions (inplace
distillation): the smallest (every layer keeps ceil((1 - bound) L_{i-1})) and `num_sandwich` with
lengths sampled as L_i uniform in [ceil((1 - bound) L_{i-1}), L_{i-1}] at every layer.

  loss = [ kd(full) + sum_j KL(softmax(z_full) || softmax(z_j)) ] / (num_sandwich + 2)

z_full is detached in the KL terms (the full student is the sub-networks' teacher). LAT divides every
term by num_sandwich + 2 as here; its KL runs the other way (KL(sub || full) in its code) and it adds
LayerDrop, which a 3-layer student does not use. Defaults: LAT's (num_sandwich 2, bound 0.2).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from lmdistill.losses import kd_kl
from lmdistill.models.features import features_from_output
from lmdistill.models.pruning import sample_lengths, to_prunable
from lmdistill.recipes.base import Needs, Recipe, Stage
from lmdistill.recipes.kd import KDSettings, kd_terms


class LengthDropSettings(KDSettings):
    num_sandwich: int = Field(2, ge=0)
    length_drop_ratio_bound: float = Field(0.2, gt=0, lt=1)
    min_tokens: int = Field(2, ge=1)


def smallest_lengths(input_length: int, num_layers: int, bound: float, min_tokens: int) -> list[int]:
    lengths, current = [], input_length
    for _ in range(num_layers):
        current = max(min(min_tokens, current), math.ceil(current * (1 - bound) - 1e-9))
        lengths.append(current)
    return lengths


class LengthDropRecipe(Recipe):
    name = "lengthdrop"
    settings_class = LengthDropSettings

    @classmethod
    def prepare_student(cls, student, config):
        return to_prunable(student, min_tokens=config.recipe.min_tokens, key="recipe 'lengthdrop'")

    def __init__(self, settings, context):
        super().__init__(settings, context)
        self.generator = torch.Generator().manual_seed(context.config.training.seed)

    def student_forward(self, net, batch, needs):
        s = self.settings
        layers = net.config.num_hidden_layers
        length = batch["input_ids"].shape[1]
        full = features_from_output(net(**batch, length_config=1.0), batch)
        configs = [smallest_lengths(length, layers, s.length_drop_ratio_bound, s.min_tokens)]
        configs += [sample_lengths(length, layers, [s.length_drop_ratio_bound], self.generator, s.min_tokens,
                                   prune_last=True)[1] for _ in range(s.num_sandwich)]
        inputs = {k: v for k, v in batch.items() if k not in self.context.task.label_keys}
        full.extras["sub_logits"] = [net(**inputs, length_config=c).logits for c in configs]
        return full

    def loss(self, student, teacher, batch):
        s = self.settings
        full, logs = kd_terms(self.context.task, s, student, teacher)
        target = student.logits.detach()
        subs = []
        for logits in student.extras["sub_logits"]:
            pairs = self.context.task.logit_pairs(logits, target, student)
            subs.append(sum(kd_kl(a, b, 1.0) for a, b in pairs) / len(pairs))
        logs["sub_kl"] = (sum(subs) / len(subs)).detach()
        return (full + sum(subs)) / (s.num_sandwich + 2), logs

    def stages(self) -> list[Stage]:
        return [Stage("lengthdrop", self.loss, student_forward=self.student_forward,
                      teacher_needs=Needs(temperature=self.settings.temperature))]
