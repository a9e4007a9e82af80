"""`lwd`: layer-wise distillation = kd + beta * distance between mapped hidden states.

The layer map is `uniform` (student layer k -> teacher layer round(k*T/S)), `last`, or explicit
[[student, teacher], ...] in hidden_states numbering (0 = embeddings). When widths differ a learned
linear projection (student width -> teacher width) is trained per mapped layer; with
`projection: false` a width mismatch is an error before training starts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from lmdistill.config import Float, LayerMap
from lmdistill.errors import ConfigError
from lmdistill.losses import masked_cosine, masked_mse
from lmdistill.recipes.base import Needs, Recipe, Stage, resolve_layer_map
from lmdistill.recipes.kd import KDSettings, kd_terms


class LWDSettings(KDSettings):
    layer_map: LayerMap = "uniform"
    beta: Float = Field(1.0, ge=0)  # weight of the hidden-state term
    distance: Literal["mse", "cosine"] = "mse"
    projection: bool = True  # learned Linear(student width -> teacher width) when widths differ
    mask_padding: bool = True


class LWDRecipe(Recipe):
    name = "lwd"
    settings_class = LWDSettings
    needs_token_alignment = True

    def __init__(self, settings, context):
        super().__init__(settings, context)
        ctx = context
        self.layer_map = resolve_layer_map(settings.layer_map, ctx.student_layers, ctx.teacher_layers)
        self.projections = nn.ModuleDict()
        if ctx.student_width != ctx.teacher_width:
            if not settings.projection:
                raise ConfigError(
                    f"recipe.projection: student hidden size {ctx.student_width} != teacher hidden size "
                    f"{ctx.teacher_width}; set recipe.projection: true"
                )
            for s, _ in self.layer_map:
                self.projections[str(s)] = nn.Linear(ctx.student_width, ctx.teacher_width)

    def stages(self) -> list[Stage]:
        task, settings = self.context.task, self.settings
        distance = masked_mse if settings.distance == "mse" else masked_cosine

        def loss(student, teacher, batch):
            total, logs = kd_terms(task, settings, student, teacher)
            mask = student.mask if settings.mask_padding else None
            hidden = 0.0
            for s, t in self.layer_map:
                state = student.hidden_states[s]
                if str(s) in self.projections:
                    state = self.projections[str(s)](state)
                hidden = hidden + distance(state, teacher.hidden_states[t], mask)
            hidden = hidden / len(self.layer_map)
            logs["hidden"] = hidden.detach()
            return total + settings.beta * hidden, logs

        return [Stage("lwd", loss, modules={"projections": self.projections},
                      student_needs=Needs(hidden_states=tuple(s for s, _ in self.layer_map)),
                      teacher_needs=Needs(hidden_states=tuple(t for _, t in self.layer_map),
                                          temperature=settings.temperature))]

    def extra_outputs(self):
        return {"projections": self.projections} if len(self.projections) else {}
