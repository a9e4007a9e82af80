"""`kd`: Hinton et al. (2015) knowledge distillation.

loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, gold)
"""

from __future__ import annotations

from pydantic import Field

from lmdistill.config import Float, RecipeConfig
from lmdistill.recipes.base import Needs, Recipe, Stage, logit_kd


class KDSettings(RecipeConfig):
    temperature: Float = Field(4.0, gt=0)
    alpha: Float = Field(0.5, ge=0, le=1)  # weight of the soft (teacher) loss; 1 - alpha on the labels


def kd_terms(task, settings: KDSettings, student, teacher) -> tuple:
    """The KD objective shared by kd, lwd and other recipes that add terms to it."""
    soft = logit_kd(task, student, teacher, settings.temperature)
    logs = {"kd": soft.detach()}
    total = settings.alpha * soft
    if settings.alpha < 1:
        hard = student.task_loss
        if hard is not None:
            total = total + (1 - settings.alpha) * hard
            logs["task"] = hard.detach()
    return total, logs


class KDRecipe(Recipe):
    name = "kd"
    settings_class = KDSettings

    def stages(self) -> list[Stage]:
        task = self.context.task

        def loss(student, teacher, batch):
            return kd_terms(task, self.settings, student, teacher)

        return [Stage("kd", loss, teacher_needs=Needs(temperature=self.settings.temperature))]
