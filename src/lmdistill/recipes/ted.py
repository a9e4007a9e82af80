"""`ted`: task-aware layer-wise distillation (Liang et al., ICML 2023, arXiv 2210.01351).

Method. Plain layer-wise distillation makes the student copy *all* of the teacher's hidden
representation, much of which a small student cannot hold and the task does not need. TED puts a
*task-aware filter* g_k (a Linear, or Linear-activation-Linear) after every `interval`-th transformer
layer of both networks, first trains each filter to keep only the task-relevant part of its layer's
output, and then distils the *filtered* representations.

Filters. The transformer layer with 0-based index l gets a filter when (l + 1) % interval == 0, i.e.
on `hidden_states[l + 1]` (index 0 is the embeddings). The teacher uses `teacher_filter_interval`,
the student `student_filter_interval`; filter k of the student pairs with filter k of the teacher, so
both must give the same number of filters, L // interval (checked when the recipe is built, before
anything trains). Every filter maps the model's hidden size to d_f = the teacher's hidden size.

Stages (each is a `Stage` the trainer runs; all four are saved and skipped on resume):

1. `teacher-filters` (stage I, teacher): the fine-tuned teacher is frozen; its filters and one task
   head per filter train on the gold labels.
2. `student-finetune`: the student is fine-tuned on the task (task loss only, no teacher).
3. `student-filters` (stage I, student): the student backbone is frozen; its filters and one head per
   filter train exactly like the teacher's.
4. `ted` (stage II): the whole student and its filters train; the teacher and its filters are frozen
   (teacher filter outputs are computed under torch.no_grad, outside the optimizer). The per-filter
   heads are dropped; the student's own task head gives the task loss.

Heads (stage I only), on a filter output F = g_k(H) in R^{B x L x d_f}:
  classification:       logits = W2 dropout(tanh(W1 dropout(F[:, 0]))) + b   (pooled first token)
  token-classification: logits = W F + b per token (CE ignores label -100)
  question-answering:   (start, end) = W F + b with W in R^{2 x d_f}; loss = (CE_start + CE_end) / 2,
                        positions outside the sequence ignored (clamped to L, ignore_index=L, as HF)

Losses, with K filters, H^(k) the hidden state under filter k:
  stage I:  L_I  = (1/K) sum_k L_task(head_k(g_k(H^(k))))
  stage II: L_II = L_task(student) + alpha_kl * T^2 KL(softmax(z_t/T) || softmax(z_s/T))
                   + alpha_mse * (1/K) sum_k MSE(g_k^s(H_s^(k)), g_k^t(H_t^(k)))
  The KL is `logit_kd` (the mean of the start and end KLs for QA; padding rows removed for NER). The
  MSE is a mean over real tokens x d_f (`losses.masked_mse`); `mask_padding: false` averages over
  padding too, as the official code does.

Defaults. temperature 2 and alpha_kl 20 are the official GLUE values (7 of 8 tasks). alpha_mse = 10
is ours. The official scripts use 10..7500 (20 on SST-2), tuned for DeBERTaV3, whose filtered
states have another scale, so the value was set from the loss magnitudes at the start of stage II
with the MiniLM-L6 teacher on SST-2 (3-layer student, 1-2k training sentences, 1 epoch per stage,
max_length 64, loss terms logged with alpha_kl = alpha_mse = 1): task CE 0.4-0.66, T^2 KL 0.07-0.14,
filtered MSE 0.23-0.25 (falling to ~0.19 by the end of the stage). alpha_mse = 10 makes the MSE term
(~2.5) about as large as the KD term (20 x 0.07-0.14 = 1.5-2.7), so neither distillation signal
swamps the other. The sweep that followed (TREC, 2-layer student, 1 epoch per stage, seed 0:
alpha_mse 1, 10 and 100 all give 90.20% accuracy; README, TED section) found the result insensitive
to it in that range, so 10 stayed. Re-tune it per task with `benchmarks/bench_ted.py --alpha-mse ...`.

Language models (`task.kind: language-modeling`, causal or masked): the paper's continual
pre-training scenario, which the official code does not include, so these choices are ours.
  - The "task" is the LM objective: next-token cross-entropy (causal; logits at i predict token i+1)
    or masked-token cross-entropy (masked; the collator's masked positions), ignoring label -100.
  - Stage I head of filter k (`lm_head`), on F = g_k(H^(k)) in R^{B x L x d_f}:
      reuse (default)  logits = head(F): the network's own final norm and LM head, frozen
                       (`models/lm_head.py`: `model.norm` / `transformer.ln_f`, then `lm_head`; BERT's
                       `cls` = transform + LayerNorm + decoder; the final norm is skipped for the last
                       layer, which HF returns already normalised). 0 trainable parameters. Needs
                       d_f = the network's width: always true for the teacher; a narrower student is an
                       error naming this key.
      project          logits = head(P_k F), P_k = Linear(d_f -> width), trainable (identity-initialised
                       when square): d_f * width + width parameters per filter (332k for SmolLM2's 576).
      low-rank         logits = U_k(D_k(LayerNorm_k(F))): the filter's own head, D_k = Linear(d_f -> r),
                       U_k = Linear(r -> V), r = `lm_head_rank` (64): 2 d_f + d_f r + r V + V parameters
                       per filter (3.23M for SmolLM2), for models whose head cannot be found or reused.
    A full vocabulary-sized head per filter (d_f x V = 576 x 49,152 = 28.3M parameters for SmolLM2,
    the size of the whole embedding matrix, per filter) is why none of these is a full head.
    The frozen head's weights are never trained (the network is frozen in stage I and the head is not
    registered in any trained module); gradients only flow through it to the filters.
  - Filters start as the identity (`filter_init: auto`), so filter k starts as layer k read by the
    model's own head (a "logit lens") and stage I learns a per-layer affine map that makes the layer
    predict the next token through the frozen head (a "tuned lens", Belrose et al. 2023, arXiv
    2303.08112). With a random filter the frozen head would start from arbitrary logits.
  - Stage II: L_II = LM loss (student, gold tokens) + alpha_kl * T^2 KL(teacher || student) over
    the vocabulary at every real position (padding rows removed; with the teacher-output cache the
    teacher's distribution is its top `training.cache_top_k` logits plus a tail bucket,
    `losses.topk_kd_kl`) + alpha_mse * filtered MSE (padding masked).
  - The student fine-tune stage is continued pre-training of the student on the LM objective alone.

Teacher filters (stage I) read the frozen teacher's hidden states through the teacher path
(`teacher_needs`; the trained network's own pass is skipped), so with `training.cache_teacher` the
teacher's forward over the data is paid once, for stage I and stage II together.

Differences from the official code (github.com/cliang1453/task-aware-distillation, DeBERTaV3 only):
- One pipeline with four stages; the official code runs separate scripts (run_glue for the student
  fine-tune, learn_filters for each model, ted for stage II) with separate checkpoints.
- The classification head's pooler uses tanh (BERT pooler); the official DeBERTa ContextPooler uses
  `pooler_hidden_act` (GELU). Dropout is the model's `classifier_dropout` or `hidden_dropout_prob`.
- Token classification (NER) is an extension: the official code covers GLUE and SQuAD 2.0 only.
  Regression (STS-B, num_labels=1) is not supported, as this toolkit's classification task has
  discrete labels.
- The MSE ignores padding by default (`mask_padding: true`); the official MSE includes it.
- In stage I a frozen backbone runs in eval mode (no dropout inside it); the official script calls
  model.train() and so keeps the frozen backbone's dropout on.
- Optimiser and schedule are the toolkit's (AdamW with `training.weight_decay`, warmup ratio); the
  official runs use weight decay 0, fp16, and keep the best checkpoint by dev score (`--save_best`),
  which this toolkit does not do (it keeps the last).
- `teacher_filter_interval: null` (the default) picks the interval that gives the student's filter
  count; the official code needs it set by hand.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lmdistill.config import Float, Int, RecipeConfig
from lmdistill.errors import ConfigError
from lmdistill.losses import masked_mse
from lmdistill.models.features import Features, batch_mask
from lmdistill.models.lm_head import LMHead, find_lm_head
from lmdistill.recipes.base import Needs, Recipe, Stage, logit_kd, task_loss

logger = logging.getLogger("lmdistill")
KINDS = ("classification", "token-classification", "question-answering", "language-modeling")
IGNORE = -100


class TEDSettings(RecipeConfig):
    teacher_filter_interval: Int | None = Field(None, ge=1)  # None: the one giving the student's filter count
    student_filter_interval: Int = Field(1, ge=1)
    filter_nonlinear: bool = False  # Linear(h, h), activation, Linear(h, d_f) instead of Linear(h, d_f)
    alpha_kl: Float = Field(20.0, ge=0)  # weight of T^2 * KL(teacher || student) on the logits
    alpha_mse: Float = Field(10.0, ge=0)  # weight of the filtered-state MSE (provisional, see the docstring)
    temperature: Float = Field(2.0, gt=0)
    mask_padding: bool = True  # False: the MSE averages over padding too, as the official code
    # random: nn.Linear's init (the official code); identity: W = I, b = 0 (square linear filters only);
    # auto: identity for language models (each filter starts as its layer read by the LM head), else random.
    filter_init: Literal["auto", "random", "identity"] = "auto"
    # Language models, stage I: what reads a filter's output (see the docstring, "Language models").
    lm_head: Literal["reuse", "project", "low-rank"] = "reuse"
    lm_head_rank: int = Field(64, ge=1)  # lm_head: low-rank only
    # Per-stage learning rates and epochs; None: training.learning_rate / training.epochs.
    stage1_teacher_lr: Float | None = Field(None, gt=0, le=1)
    stage1_teacher_epochs: Float | None = Field(None, gt=0)
    student_finetune_lr: Float | None = Field(None, gt=0, le=1)
    student_finetune_epochs: Float | None = Field(None, gt=0)
    stage1_student_lr: Float | None = Field(None, gt=0, le=1)
    stage1_student_epochs: Float | None = Field(None, gt=0)
    stage2_lr: Float | None = Field(None, gt=0, le=1)
    stage2_epochs: Float | None = Field(None, gt=0)


def filter_positions(num_layers: int, interval: int) -> list[int]:
    """hidden_states indices that get a filter: layer l (0-based) when (l + 1) % interval == 0."""
    return [l + 1 for l in range(num_layers) if (l + 1) % interval == 0]


def make_filter(width: int, out_width: int, nonlinear: bool, activation: str | None,
                identity: bool = False) -> nn.Module:
    """Linear(width, out_width), or Linear(width, width), activation, Linear(width, out_width).
    identity: W = I, b = 0 (linear, width == out_width only)."""
    if not nonlinear:
        layer = nn.Linear(width, out_width)
        if identity:
            with torch.no_grad():
                nn.init.eye_(layer.weight)
                layer.bias.zero_()
        return layer
    from transformers.activations import ACT2FN

    act = ACT2FN[activation] if isinstance(activation, str) and activation in ACT2FN else nn.GELU()
    return nn.Sequential(nn.Linear(width, width), act, nn.Linear(width, out_width))


class PooledHead(nn.Module):
    """Classification head on the first token: dropout, Linear, tanh, dropout, Linear."""

    def __init__(self, width: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(width, width)
        self.classifier = nn.Linear(width, num_labels)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        pooled = torch.tanh(self.dense(self.dropout(states[:, 0])))
        return self.classifier(self.dropout(pooled))


def make_head(kind: str, width: int, num_labels: int, dropout: float) -> nn.Module:
    if kind == "classification":
        return PooledHead(width, num_labels, dropout)
    if kind == "token-classification":
        return nn.Linear(width, num_labels)
    return nn.Linear(width, 2)  # question answering: start and end logits


class LowRankLMHead(nn.Module):
    """A filter's own LM head: LayerNorm(d_f), Linear(d_f, r, no bias), Linear(r, V).
    Parameters: 2 d_f + d_f r + r V + V (3.23M for d_f 576, r 64, V 49,152)."""

    def __init__(self, width: int, rank: int, vocab_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.down = nn.Linear(width, rank, bias=False)
        self.up = nn.Linear(rank, vocab_size)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(self.norm(states)))


def lm_head_parameters(mode: str, d_f: int, width: int, rank: int, vocab_size: int) -> int:
    """Trainable parameters of one filter's stage-I LM head (see the docstring, "Language models")."""
    if mode == "reuse":
        return 0
    if mode == "project":
        return d_f * width + width
    return 2 * d_f + d_f * rank + rank * vocab_size + vocab_size


def qa_loss(start_logits, end_logits, start_positions, end_positions) -> torch.Tensor:
    """HF's span loss: positions outside the sequence are clamped to L and ignored."""
    if start_positions.dim() > 1:
        start_positions = start_positions.squeeze(-1)
    if end_positions.dim() > 1:
        end_positions = end_positions.squeeze(-1)
    ignored = start_logits.size(1)
    start_positions = start_positions.clamp(0, ignored)
    end_positions = end_positions.clamp(0, ignored)
    start = F.cross_entropy(start_logits.float(), start_positions, ignore_index=ignored)
    end = F.cross_entropy(end_logits.float(), end_positions, ignore_index=ignored)
    return (start + end) / 2


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """Token cross-entropy of LM logits [B, L, V] against labels [B, L] (-100 ignored): next-token
    (logits at i predict labels at i + 1) when causal, else at the labelled (masked) positions."""
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    labels = labels.reshape(-1)
    if not (labels != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels, ignore_index=IGNORE)


def head_loss(kind: str, logits: torch.Tensor, batch: dict, causal: bool = True) -> torch.Tensor:
    """The task loss of one filter head's logits against the gold labels in the batch."""
    if kind == "question-answering":
        if "start_positions" not in batch or "end_positions" not in batch:
            raise ConfigError("recipe ted: stage I needs start_positions/end_positions in the batch")
        start, end = logits.unbind(-1)
        return qa_loss(start.contiguous(), end.contiguous(), batch["start_positions"], batch["end_positions"])
    labels = batch.get("labels")
    if labels is None:
        raise ConfigError("recipe ted: stage I needs labels in the batch")
    if kind == "language-modeling":
        return lm_loss(logits, labels, causal)
    if kind == "token-classification":
        labels = labels.reshape(-1)
        if not (labels != -100).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels, ignore_index=-100)
    return F.cross_entropy(logits.float(), labels.reshape(-1))


def _dropout_of(config) -> float:
    for key in ("classifier_dropout", "hidden_dropout_prob", "hidden_dropout", "dropout"):
        value = getattr(config, key, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.1


def no_forward(net, batch, needs) -> Features:
    """The trained network's own pass, skipped: its hidden states come through the teacher path."""
    return Features(logits=None, hidden_states=(), attentions=None, mask=batch_mask(batch), task_loss=None)


class TEDRecipe(Recipe):
    name = "ted"
    settings_class = TEDSettings
    needs_token_alignment = True

    def __init__(self, settings: TEDSettings, context):
        super().__init__(settings, context)
        ctx = context
        self.kind = ctx.config.task.kind
        if self.kind not in KINDS:
            raise ConfigError(
                f"recipe.name: ted supports {', '.join(KINDS)} tasks, not task.kind '{self.kind}'"
            )
        t_layers, s_layers = ctx.teacher_layers, ctx.student_layers
        s_interval = settings.student_filter_interval
        t_interval = settings.teacher_filter_interval
        if t_interval is None:  # pick the interval that gives the student's filter count, if one does
            t_interval = max(1, t_layers // max(1, s_layers // s_interval))
        self.teacher_interval, self.student_interval = t_interval, s_interval
        self.teacher_positions = filter_positions(t_layers, t_interval)
        self.student_positions = filter_positions(s_layers, s_interval)
        if not self.student_positions or len(self.teacher_positions) != len(self.student_positions):
            hint = ""
            if s_layers // s_interval and t_layers % (s_layers // s_interval) == 0:
                hint = f" (e.g. teacher_filter_interval: {t_layers // (s_layers // s_interval)})"
            raise ConfigError(
                f"recipe.teacher_filter_interval/student_filter_interval: the teacher has {t_layers} layers "
                f"with filter interval {t_interval} ({len(self.teacher_positions)} filters) but the student has "
                f"{s_layers} layers with filter interval {s_interval} ({len(self.student_positions)} filters); "
                f"student filter k pairs with teacher filter k, so the counts must be equal and > 0{hint}"
            )
        d_f = ctx.teacher_width
        self.language_model = self.kind == "language-modeling"
        self.causal = bool(ctx.task.causal) if self.language_model else False
        nonlinear = settings.filter_nonlinear
        t_cfg, s_cfg = ctx.teacher.config, ctx.student.config
        self.teacher_filters = nn.ModuleDict({
            f"layer{i}": make_filter(ctx.teacher_width, d_f, nonlinear, getattr(t_cfg, "hidden_act", None),
                                     self._identity(ctx.teacher_width, d_f))
            for i in self.teacher_positions
        })
        self.student_filters = nn.ModuleDict({
            f"layer{i}": make_filter(ctx.student_width, d_f, nonlinear, getattr(s_cfg, "hidden_act", None),
                                     self._identity(ctx.student_width, d_f))
            for i in self.student_positions
        })
        if self.language_model:
            self.teacher_lm_head = self._lm_head(ctx.teacher, "teacher", d_f)
            self.student_lm_head = self._lm_head(ctx.student, "student", d_f)
            self.teacher_heads = self._lm_head_modules(self.teacher_filters, ctx.teacher, d_f, "teacher")
            self.student_heads = self._lm_head_modules(self.student_filters, ctx.student, d_f, "student")
            return
        self.num_labels = self._num_labels()
        self.teacher_heads = nn.ModuleDict({
            name: make_head(self.kind, d_f, self.num_labels, _dropout_of(t_cfg)) for name in self.teacher_filters
        })
        self.student_heads = nn.ModuleDict({
            name: make_head(self.kind, d_f, self.num_labels, _dropout_of(s_cfg)) for name in self.student_filters
        })

    def _identity(self, width: int, d_f: int) -> bool:
        init = self.settings.filter_init
        square_linear = width == d_f and not self.settings.filter_nonlinear
        if init == "identity" and not square_linear:
            raise ConfigError(
                f"recipe.filter_init: identity needs linear filters of equal widths, but a filter maps {width} -> {d_f}"
                + (" through a nonlinear filter" if self.settings.filter_nonlinear else "")
                + "; set recipe.filter_init: random")
        return init == "identity" or (init == "auto" and square_linear and self.context.config.task.kind
                                      == "language-modeling")

    def _lm_head(self, model, role: str, d_f: int) -> LMHead | None:
        """The network's own frozen LM head that reads the filter outputs, or None for own heads.
        Raises a one-line ConfigError naming recipe.lm_head when it cannot read them."""
        mode = self.settings.lm_head
        if mode == "low-rank":
            return None
        head = find_lm_head(model)
        if head is None:
            raise ConfigError(
                f"recipe.lm_head: cannot find the {role}'s LM head in {type(model).__name__} (looked for "
                f"lm_head and cls); set recipe.lm_head: low-rank (a trainable head per filter)")
        if mode == "reuse" and head.width != d_f:
            cost = lm_head_parameters("project", d_f, head.width, 0, 0)
            raise ConfigError(
                f"recipe.lm_head: the {role}'s LM head reads {head.width}-wide states but its filters map to the "
                f"teacher's width {d_f}, so the head cannot be reused on the filter outputs; set recipe.lm_head: "
                f"project (a trainable Linear({d_f} -> {head.width}) per filter before the frozen head, {cost:,} "
                f"parameters each) or recipe.lm_head: low-rank")
        return head

    def _lm_head_modules(self, filters: nn.ModuleDict, model, d_f: int, role: str) -> nn.ModuleDict:
        """The trainable part of each filter's stage-I LM head: nothing (reuse), a Linear(d_f, width)
        (project) or a LowRankLMHead (low-rank)."""
        s = self.settings
        width, vocab = int(model.config.hidden_size), int(model.config.vocab_size)
        if s.lm_head == "reuse":
            heads = {name: nn.Identity() for name in filters}
        elif s.lm_head == "project":
            heads = {name: make_filter(d_f, width, False, None, identity=d_f == width) for name in filters}
        else:
            heads = {name: LowRankLMHead(d_f, s.lm_head_rank, vocab) for name in filters}
        cost = lm_head_parameters(s.lm_head, d_f, width, s.lm_head_rank, vocab)
        logger.info("ted: %s: %d filters, stage-I lm_head %s: %s trainable head parameters per filter", role,
                    len(filters), s.lm_head, f"{cost:,}")
        return nn.ModuleDict(heads)

    def _num_labels(self) -> int:
        if self.kind == "question-answering":
            return 2
        labels = getattr(self.context.task, "labels", None)
        if labels:
            return len(labels)
        return int(self.context.teacher.config.num_labels)

    # ---- losses ---------------------------------------------------------------------------
    def _filter_outputs(self, filters: nn.ModuleDict, hidden_states) -> list[torch.Tensor]:
        return [module(hidden_states[int(name.removeprefix("layer"))]) for name, module in filters.items()]

    def _stage1_loss(self, filters: nn.ModuleDict, heads: nn.ModuleDict, lm_head: LMHead | None, side: str):
        """Stage I: (1/K) sum_k task loss of head_k(g_k(H^(k))). side: which Features holds H (the
        teacher's come through the teacher path, so the output cache can hold them)."""
        kind, causal = self.kind, self.causal

        def loss(features, teacher, batch):
            hidden = (teacher if side == "teacher" else features).hidden_states
            outputs = self._filter_outputs(filters, hidden)
            values = []
            for name, out in zip(filters, outputs):
                logits = heads[name](out)
                if lm_head is not None:  # the network's frozen final norm and LM head
                    logits = lm_head.to(out.device)(logits, int(name.removeprefix("layer")))
                values.append(head_loss(kind, logits, batch, causal))
            total = sum(values) / len(values)
            logs = {"filters": total.detach()}
            logs.update({f"filter_{name}": v.detach() for name, v in zip(filters, values)})
            return total, logs

        return loss

    def _stage2_loss(self, student, teacher, batch):
        settings = self.settings
        hard = task_loss(student)
        soft = logit_kd(self.context.task, student, teacher, settings.temperature)
        with torch.no_grad():
            device = student.mask.device
            self.teacher_filters.to(device).eval()
            targets = self._filter_outputs(self.teacher_filters, teacher.hidden_states)
        states = self._filter_outputs(self.student_filters, student.hidden_states)
        mask = student.mask if settings.mask_padding else None
        mse = sum(masked_mse(s, t, mask) for s, t in zip(states, targets)) / len(states)
        total = hard + settings.alpha_kl * soft + settings.alpha_mse * mse
        return total, {"task": hard.detach(), "kd": soft.detach(), "mse": mse.detach()}

    def stages(self) -> list[Stage]:
        s = self.settings

        def finetune_loss(student, teacher, batch):
            value = task_loss(student)
            return value, {"task": value.detach()}

        teacher_stage2 = Needs(hidden_states=tuple(self.teacher_positions), temperature=s.temperature)
        student_layers = Needs(logits=False, hidden_states=tuple(self.student_positions))
        lm = self.language_model
        return [
            # The frozen teacher's hidden states come through the teacher path (teacher_needs), not from a
            # second pass of the trained network: with training.cache_teacher they are computed once. The
            # stage declares what stage II reads of the teacher too (its logits are computed by the same
            # forward anyway), so one teacher pass fills the cache for both stages.
            Stage("teacher-filters",
                  self._stage1_loss(self.teacher_filters, self.teacher_heads,
                                    self.teacher_lm_head if lm else None, "teacher"),
                  net="teacher", modules={"filters": self.teacher_filters, "heads": self.teacher_heads},
                  train_backbone=False, student_needs=Needs(logits=False), student_forward=no_forward,
                  teacher_needs=teacher_stage2, epochs=s.stage1_teacher_epochs, learning_rate=s.stage1_teacher_lr),
            Stage("student-finetune", finetune_loss, teacher_needs=None,
                  epochs=s.student_finetune_epochs, learning_rate=s.student_finetune_lr),
            Stage("student-filters",
                  self._stage1_loss(self.student_filters, self.student_heads,
                                    self.student_lm_head if lm else None, "student"),
                  net="student", modules={"filters": self.student_filters, "heads": self.student_heads},
                  train_backbone=False, student_needs=student_layers, teacher_needs=None,
                  epochs=s.stage1_student_epochs, learning_rate=s.stage1_student_lr),
            Stage("ted", self._stage2_loss, modules={"filters": self.student_filters},
                  student_needs=Needs(hidden_states=tuple(self.student_positions)),
                  teacher_needs=teacher_stage2, epochs=s.stage2_epochs, learning_rate=s.stage2_lr),
        ]

    def extra_outputs(self) -> dict[str, nn.Module]:
        return {"teacher_filters": self.teacher_filters, "student_filters": self.student_filters}
