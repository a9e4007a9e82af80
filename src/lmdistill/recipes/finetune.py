"""`finetune`: train the student on the gold labels alone, no teacher. The baseline every
distillation recipe must beat."""

from __future__ import annotations

from lmdistill.config import RecipeConfig
from lmdistill.recipes.base import Recipe, Stage, task_loss


class FinetuneSettings(RecipeConfig):
    pass


class FinetuneRecipe(Recipe):
    name = "finetune"
    settings_class = FinetuneSettings
    needs_teacher = False

    def stages(self) -> list[Stage]:
        def loss(student, teacher, batch):
            value = task_loss(student)
            return value, {"task": value.detach()}

        return [Stage("finetune", loss, teacher_needs=None)]
