"""`fcd`: Feature Correlation Distillation, FCD-style (Huang, Guo, Wang, NeurIPS 2023).

Method. Knowledge is taken from the output features of transformer blocks as *relations*, not by
matching the features themselves: for each mapped (student layer s, teacher layer t) pair the student
is trained so that its relation matrices correlate with the teacher's. Relations depend on no hidden
size and use no learned parameters, so teacher and student widths may differ with no projection.

For hidden states H [B, L, d] (d may differ between teacher and student) and padding mask M [B, L]:

- token level (per sequence b), `token_relation`:
    cosine:  R_tok[b, i, j] = cos(H[b, i], H[b, j])                                   [B, L, L]
    softmax: R_tok[b, i, :] = softmax_j(H[b, i] . H[b, j] / sqrt(d)) over valid j
  valid entries: M[b, i] = M[b, j] = 1, and j <= i when causal.
- sequence level, `sequence_relation`:
    position: R_seq[l, i, k] = cos(H[i, l], H[k, l])                                  [L, B, B]
              valid entries: M[i, l] = M[k, l] = 1 (only sequences with a real token at l)
    pooled:   R_seq[i, k] = cos(pool(H[i]), pool(H[k]))                               [B, B]
              pool = mean over real tokens (`pooling: mean`) or the first token (`pooling: first`)
- correlation loss, for relations R_s (student), R_t (teacher) and valid entry set V:
    rho_r   = Pearson(R_s[r, V_r], R_t[r, V_r])   (cosine of the mean-centred valid entries of row r)
    L_corr  = 1 - mean_{valid rows r} rho_r
  A row is valid when it has >= 2 valid entries and the teacher row is not constant there.
  `use_columns: true` uses L_corr = (L_corr(rows) + L_corr(columns, i.e. on the transposes)) / 2.

Total loss (P = the layer map, |P| its size):

    L = alpha_task * L_task
      + alpha_kd   * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))      (logit_kd, the task's logit pairs)
      + beta       * (1/|P|) sum_{(s,t) in P} L_corr(R_tok(H_s^s), R_tok(H_t^t))
      + gamma      * (1/|P|) sum_{(s,t) in P} L_corr(R_seq(H_s^s), R_seq(H_t^t))

Teacher relations are computed from detached teacher states: gradients reach the student only.
Token-only, sequence-only and both variants are `gamma: 0`, `beta: 0`, and the default.

Causal LMs (`causal: auto` follows the student: a *CausalLM architecture or `is_decoder`): a token
relates only to itself and earlier tokens, so future positions are excluded from every row of the
token relation; the first token's row (one entry) carries no correlation and is skipped. Logit KD
then runs over the vocabulary at every position, with temperature, through the task's logit pairs.

What is verified against the paper (abstract only, see research/methods.md section 4.1): relations
from transformer-block output features, token-level and sequence-level relations used together, a
correlation-based loss, no extra parameters, BERT/RoBERTa/GPT students. EVERYTHING ELSE IS OUR
RECONSTRUCTION (methods.md section 4.2), not confirmed against the paper: the cosine / softmax
relation definitions; the per-position (default) vs pooled sequence relation; row-wise Pearson
("DIST-style") with the optional column term; the layer map (`uniform` by default); adding logit KD
and the task loss, and every default weight (alpha_task 0.5, alpha_kd 0.5, T 4.0, beta 1.0, gamma 1.0);
how padding and causality are masked; keeping the diagonal (self-similarity) in every row; skipping
rows whose correlation is undefined (fewer than 2 valid entries, or a constant teacher row). Report results
as "FCD-style" until these are checked against the paper.

Why `sequence_relation: position` is the default: it is the reading in methods.md 4.2 (token and
sequence relations built "concurrently" from the same output features: the token relation compares
along the length axis for a fixed sequence, the sequence relation along the batch axis for a fixed
position); and it gives L*B rows of supervision per batch instead of B, so the row correlations are
far less noisy at training batch sizes of 16-32. `pooled` is one setting away.

The defaults alpha_task = alpha_kd = 0.5 and T = 4 equal those of the `kd` recipe, so `fcd` minus
`kd` in a benchmark isolates the relation terms.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import Field, model_validator

from lmdistill.config import Float, LayerMap, RecipeConfig
from lmdistill.errors import ConfigError
from lmdistill.losses import (
    correlation_loss,
    sequence_relations_per_position,
    sequence_relations_pooled,
    token_relations,
)
from lmdistill.recipes.base import Needs, Recipe, Stage, logit_kd, resolve_layer_map


class FCDSettings(RecipeConfig):
    layer_map: LayerMap = "uniform"
    alpha_task: Float = Field(0.5, ge=0)  # weight of the model's own loss on the gold labels (0: off)
    alpha_kd: Float = Field(0.5, ge=0)  # weight of temperature KD on the logits (0: off)
    temperature: Float = Field(4.0, gt=0)
    beta: Float = Field(1.0, ge=0)  # token-level relation term (0: sequence-only FCD)
    gamma: Float = Field(1.0, ge=0)  # sequence-level relation term (0: token-only FCD)
    token_relation: Literal["cosine", "softmax"] = "cosine"
    sequence_relation: Literal["position", "pooled"] = "position"
    pooling: Literal["mean", "first"] = "mean"  # sequence_relation: pooled only
    use_columns: bool = False  # also correlate columns; the loss is the mean of row and column terms
    causal: Literal["auto", "true", "false"] | bool = "auto"  # auto: from the student's config

    @model_validator(mode="after")
    def _something_trains(self):
        if not any((self.alpha_task, self.alpha_kd, self.beta, self.gamma)):
            raise ValueError("alpha_task, alpha_kd, beta and gamma are all 0; nothing would train")
        return self


def is_causal_model(model) -> bool:
    """A causal (decoder-only) LM: a *CausalLM class or architecture, or `is_decoder` in its config."""
    config = model.config
    names = list(getattr(config, "architectures", None) or []) + [type(model).__name__]
    return any("CausalLM" in name for name in names) or bool(getattr(config, "is_decoder", False))


def resolve_causal(setting, model) -> bool:
    if setting in (True, "true"):
        return True
    if setting in (False, "false"):
        return False
    return is_causal_model(model)


class FCDRecipe(Recipe):
    name = "fcd"
    settings_class = FCDSettings
    needs_token_alignment = True

    def __init__(self, settings, context):
        super().__init__(settings, context)
        self.layer_map = resolve_layer_map(settings.layer_map, context.student_layers, context.teacher_layers)
        self.causal = resolve_causal(settings.causal, context.student)

    def token_term(self, hs, ht, mask):
        kind = self.settings.token_relation
        rs, valid = token_relations(hs, mask, kind, self.causal)
        rt, _ = token_relations(ht.detach(), mask, kind, self.causal)
        return correlation_loss(rs, rt, valid, self.settings.use_columns)

    def sequence_term(self, hs, ht, mask):
        if self.settings.sequence_relation == "position":
            rs, valid = sequence_relations_per_position(hs, mask)
            rt, _ = sequence_relations_per_position(ht.detach(), mask)
        else:
            rs, valid = sequence_relations_pooled(hs, mask, self.settings.pooling)
            rt, _ = sequence_relations_pooled(ht.detach(), mask, self.settings.pooling)
        return correlation_loss(rs, rt, valid, self.settings.use_columns)

    def stages(self) -> list[Stage]:
        task, settings = self.context.task, self.settings

        def loss(student, teacher, batch):
            total = 0.0
            logs = {}
            if settings.alpha_task > 0:
                if student.task_loss is None:
                    raise ConfigError("recipe.alpha_task: the batch has no labels; set recipe.alpha_task: 0")
                total = total + settings.alpha_task * student.task_loss
                logs["task"] = student.task_loss.detach()
            if settings.alpha_kd > 0:
                # The trainer runs the teacher under no_grad; detach anyway so the loss never trains it.
                frozen = dataclasses.replace(teacher, logits=teacher.logits.detach())
                kd = logit_kd(task, student, frozen, settings.temperature)
                total = total + settings.alpha_kd * kd
                logs["kd"] = kd.detach()
            mask = student.mask
            for weight, term, label in ((settings.beta, self.token_term, "token"),
                                        (settings.gamma, self.sequence_term, "sequence")):
                if weight <= 0:
                    continue
                value = sum(term(student.hidden_states[s], teacher.hidden_states[t], mask)
                            for s, t in self.layer_map) / len(self.layer_map)
                total = total + weight * value
                logs[label] = value.detach()
            return total, logs

        relations = settings.beta > 0 or settings.gamma > 0
        return [Stage("fcd", loss,
                      student_needs=Needs(hidden_states=tuple(s for s, _ in self.layer_map) if relations else ()),
                      teacher_needs=Needs(logits=settings.alpha_kd > 0,
                                          hidden_states=tuple(t for _, t in self.layer_map) if relations else (),
                                          temperature=settings.temperature))]
