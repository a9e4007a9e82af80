"""`lad`: Length-Adaptive Distillation (Liu et al., Findings of EMNLP 2023), from the official code
(github.com/EMNLP-LAD/LAD, `distillation/customized_criterions/lad.py`).

Method. The student is made to stay accurate when most of its tokens are dropped part-way through
the network (token pruning by attention received, `models/pruning.py`). One student serves every
speed: at inference the user picks a keep ratio or per-layer lengths. The student is the prunable
version of the configured BERT/RoBERTa student (same weights; saved as a `prunable-bert` /
`prunable-roberta` HF folder, see models/pruning.py for how to load it).

Stage 1, `general` (only when `corpus` is given): raw text (`corpus`, blocks of `block_size` tokens,
labels never seen), the *pretrained* teacher (before task fine-tuning). Per step the student runs
twice: unpruned, and pruned with a length configuration sampled as in LAD (a drop-ratio bound r from
`general_drop_ratios`, then L_i uniform in [ceil(L_{i-1}(1 - r)), L_{i-1}], the last layer keeping what
the one before kept). With N student layers and T teacher layers, t_k = teacher hidden_states[k]:

  L_full  = InfoNCE(P(s_N), t_{T-1}; Q_{T-1}) + MSE(scores_s^N, scores_t^{T-1})
  L_align = InfoNCE(P(s_N^kept), t_{T-1} at the kept positions; Q_{T-1})
            + MSE(pruned student's last-layer scores, q_t^{T-1} k_t^{T-1}T / sqrt(d_t) on the same tokens)
  L_rec   = InfoNCE(h, t_T; Q_T) + MSE(scores of that pass, scores_t^T), where h = the teacher's frozen
            last layer applied to R(x): x = the student's final state at every kept position, and at
            every dropped position the filler word_emb([MASK]) + pos_emb(position) + type_emb(type)
            + its state when dropped (all but the mask embedding detached)
  loss    = L_full + pruned_weight * (L_align + L_rec)                     (LAD: pruned_weight 0.5)

InfoNCE (`losses.info_nce`): per real token except the first, the student vector projected to the
teacher's width (P = `dense_last`, R = `dense_reconstruct`, Linear layers) against the teacher vector
at the same position (positive) and a memory queue of earlier teacher vectors (negatives), tau =
`tau`. The queues (`token_queue_size` each; Q_{T-1} and Q_T) are filled with the step's teacher
vectors after the loss, without gradients. Attention-score MSE (`losses.attention_score_mse`):
pre-softmax scores with the mask, first row/column dropped, masked entries zeroed; it compares
heads one to one, so student and teacher need the same head count (checked before training).

Stage 2, `task`: the task data, the task-adapted (fine-tuned) teacher. Only the pruned student runs,
with r from `task_drop_ratios` (0 = unpruned): InfoNCE between P(student final [CLS]) and the
teacher's final [CLS] with a sentence queue (`sentence_queue_size`, capped below the training-set
size so a sentence never meets its own earlier copy as a negative), plus prediction-layer KD so
that the student ends as a classifier (ours, not in LAD's released code):

  loss = alpha_cls * InfoNCE_cls + alpha_pred * T^2 KL(teacher || student logits at `pred_temperature`)
         + alpha_task * CE(gold labels)       (alpha_task 0, the default, keeps the stage label-free)

Token classification uses the same losses: KD per token on the restored outputs.

`task_stage: false` stops after stage 1: the saved student is then a task-agnostic general student
(its task head untrained) that later runs can start from (`student: {path: ...}`, no corpus), as LAD
makes one general student for every task. `dense_last` then restarts as the identity.

Differences from the official code, all ours: the student here starts from teacher layers (LAD's
starts from random initialisation); `dense_last`/`dense_reconstruct` start as the identity when the
widths match; significance sums over real query rows only; kept tokens stay in their original order
(LAD's top-k order; attention does not depend on it); the queues wrap around; queue sizes default to
4096 (LAD: 16384) for CPU-sized batches; the classifier step is ours (see above).
"""

from __future__ import annotations

import logging
import math
from typing import Annotated

import torch
from pydantic import Field, field_validator
from torch import nn
from transformers import DataCollatorWithPadding

from lmdistill.config import RecipeConfig
from lmdistill.errors import ConfigError
from lmdistill.losses import attention_score_mse, info_nce
from lmdistill.models.features import Features, batch_mask, features_from_output
from lmdistill.models.pruning import (
    additive_mask,
    capture_base_output,
    check_encoder,
    check_keep_ratio,
    check_length_config,
    encoder_forward,
    gather_tokens,
    layer_forward,
    position_ids_of,
    sample_lengths,
    to_prunable,
)
from lmdistill.recipes.base import Needs, Recipe, Stage, StageData, logit_kd

logger = logging.getLogger("lmdistill")
KINDS = ("classification", "token-classification")


class LADSettings(RecipeConfig):
    corpus: list[str] | None = None  # raw text files/globs for stage 1; None: no general stage
    block_size: int = Field(128, ge=8)
    max_corpus_tokens: int | None = Field(None, ge=1)
    general_epochs: float = Field(1.0, gt=0)
    general_learning_rate: float | None = Field(None, gt=0)  # None: training.learning_rate
    general_drop_ratios: list[Annotated[float, Field(ge=0, lt=1)]] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    task_stage: bool = True  # False: stop after the general stage (a task-agnostic student for student.path)
    task_epochs: float | None = Field(None, gt=0)  # None: training.epochs
    task_learning_rate: float | None = Field(None, gt=0)
    task_drop_ratios: list[Annotated[float, Field(ge=0, lt=1)]] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    tau: float = Field(0.07, gt=0)  # InfoNCE temperature
    token_queue_size: int = Field(4096, ge=1)
    sentence_queue_size: int = Field(4096, ge=1)
    pruned_weight: float = Field(0.5, ge=0)  # weight of L_align + L_rec
    alpha_cls: float = Field(1.0, ge=0)
    alpha_pred: float = Field(1.0, ge=0)
    pred_temperature: float = Field(1.0, gt=0)
    alpha_task: float = Field(0.0, ge=0)
    min_tokens: int = Field(2, ge=1)
    default_length_config: (Annotated[float, Field(gt=0, le=1)] | list[Annotated[int, Field(ge=1)]]
                            | list[Annotated[float, Field(gt=0, le=1)]]) = 1.0  # saved in the student's config

    @field_validator("corpus", mode="before")
    @classmethod
    def _one_file(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("general_drop_ratios", "task_drop_ratios")
    @classmethod
    def _ratios(cls, value):
        if not value or any(not 0 <= r < 1 for r in value):
            raise ValueError(f"{value}: give drop ratios in [0, 1)")
        return value

    @field_validator("default_length_config")
    @classmethod
    def _keep_ratio(cls, value):
        if isinstance(value, float):
            check_keep_ratio(value, "recipe.default_length_config")
        return value


class MemoryQueue(nn.Module):
    """A FIFO of L2-normalised teacher vectors [size, dim] (a buffer: saved, never trained)."""

    def __init__(self, size: int, dim: int, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("vectors", nn.functional.normalize(torch.randn(size, dim, generator=generator), dim=-1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest entries by `keys` [n, dim] (normalised here), wrapping around."""
        keys = nn.functional.normalize(keys.detach().float(), dim=-1)[-self.vectors.shape[0]:]
        size, count = self.vectors.shape[0], keys.shape[0]
        slots = (int(self.pointer) + torch.arange(count, device=keys.device)) % size
        self.vectors[slots] = keys.to(self.vectors.dtype)
        self.pointer.fill_((int(self.pointer) + count) % size)


def projection(width: int, out_width: int) -> nn.Linear:
    """Linear(width -> out_width); the identity when the widths match (the student is cut from the teacher)."""
    layer = nn.Linear(width, out_width)
    if width == out_width:
        with torch.no_grad():
            layer.weight.copy_(torch.eye(width))
            layer.bias.zero_()
    return layer


def real_rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, D] -> [n, D]: the real tokens except the first of each sequence."""
    return x[:, 1:][mask[:, 1:].bool()]


def heads_at(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [B, heads, L, d] at positions [B, K] -> [B, heads, K, d]."""
    return x.gather(2, positions[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3]))


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


class LADRecipe(Recipe):
    name = "lad"
    settings_class = LADSettings

    @classmethod
    def prepare_student(cls, student: nn.Module, config) -> nn.Module:
        check_length_config(config.recipe.default_length_config, student.config.num_hidden_layers,
                            "recipe.default_length_config")
        return to_prunable(student, config.recipe.default_length_config, config.recipe.min_tokens, key="recipe 'lad'")

    def __init__(self, settings: LADSettings, context):
        super().__init__(settings, context)
        kind = context.config.task.kind
        if kind not in KINDS:
            raise ConfigError(f"recipe.name: 'lad' supports the task kinds {', '.join(KINDS)}, not '{kind}'")
        check_encoder(context.teacher, "recipe 'lad'", "teacher")
        student, teacher = context.student, context.teacher
        self.student_layers = student.config.num_hidden_layers
        self.teacher_layers = teacher.config.num_hidden_layers
        self.teacher_width = teacher.config.hidden_size
        seed = context.config.training.seed
        self.generator = torch.Generator().manual_seed(seed)
        self.dense_last = projection(student.config.hidden_size, self.teacher_width)
        self.corpus_files = None
        if settings.corpus:
            from lmdistill.tasks.corpus import resolve_corpus

            self.corpus_files = resolve_corpus(settings.corpus, "recipe.corpus", context.search_dirs)
            heads_s, heads_t = student.config.num_attention_heads, teacher.config.num_attention_heads
            if heads_s != heads_t:
                raise ConfigError(
                    f"recipe 'lad': the attention-score losses compare heads one to one, but the student has "
                    f"{heads_s} attention heads and the teacher {heads_t}; give the student {heads_t} heads "
                    f"(student.config.num_attention_heads) or drop recipe.corpus (no general stage)")
            if self.teacher_layers < 2:
                raise ConfigError("recipe 'lad': the general stage needs a teacher with at least 2 layers")
            if context.tokenizer is not None and context.tokenizer.mask_token_id is None:
                raise ConfigError("recipe 'lad': the tokenizer has no mask token, which the reconstruction needs")
            self.dense_reconstruct = projection(student.config.hidden_size, self.teacher_width)
            self.queue_mid = MemoryQueue(settings.token_queue_size, self.teacher_width, seed)
            self.queue_last = MemoryQueue(settings.token_queue_size, self.teacher_width, seed + 1)

    # ---- stage 1: general distillation ----------------------------------------------------------------

    def general_data(self) -> StageData:
        from lmdistill.tasks.corpus import corpus_dataset

        tokenizer = self.context.tokenizer
        dataset = corpus_dataset(self.corpus_files, tokenizer, self.settings.block_size, causal=False,
                                 max_tokens=self.settings.max_corpus_tokens)
        logger.info("lad general stage: %d blocks of %d tokens from %d file(s)", len(dataset),
                    self.settings.block_size, len(self.corpus_files))
        return StageData(dataset, DataCollatorWithPadding(tokenizer, return_tensors="pt"), name="corpus")

    def general_student_forward(self, net, batch, needs) -> Features:
        """The unpruned and the pruned pass (a sampled length configuration), and the pruned pass's
        reconstruction input."""
        base, last = net.base_model, self.student_layers
        inputs = model_inputs(batch)
        full = base(**inputs, length_config=1.0, output_attention_scores=[last])
        _, lengths = sample_lengths(inputs["input_ids"].shape[1], last, self.settings.general_drop_ratios,
                                    self.generator, self.settings.min_tokens)
        pruned = base(**inputs, length_config=lengths, output_attention_scores=[last])
        extras = {"full": full, "pruned": pruned, "reconstruction": self.reconstruction_input(base, pruned, batch)}
        return Features(None, (), None, batch_mask(batch), None, extras=extras)

    def general_teacher_forward(self, teacher, batch, needs) -> Features:
        mid, last = self.teacher_layers - 1, self.teacher_layers
        out = encoder_forward(teacher.base_model, **model_inputs(batch), output_hidden_states=True,
                              output_attention_scores=[mid, last], output_qk=[mid])
        hidden = tuple(h if i in (mid, last) else None for i, h in enumerate(out.hidden_states))
        extras = {"scores_mid": out.attention_scores[mid - 1], "scores_last": out.attention_scores[last - 1],
                  "q_mid": out.query_states[mid - 1], "k_mid": out.key_states[mid - 1]}
        return Features(None, hidden, None, batch_mask(batch), None, extras=extras)

    def reconstruction_input(self, base, pruned, batch) -> torch.Tensor:
        """[B, L, H]: the student's final state at kept positions, the [MASK] filler at dropped ones."""
        input_ids = batch["input_ids"]
        restored = pruned.last_hidden_state
        kept = torch.zeros_like(input_ids, dtype=torch.bool).scatter(1, pruned.final_positions, True)
        embeddings = base.embeddings
        mask_ids = torch.full_like(input_ids, self.context.tokenizer.mask_token_id)
        types = batch.get("token_type_ids")
        types = torch.zeros_like(input_ids) if types is None else types
        filler = (embeddings.word_embeddings(mask_ids)
                  + embeddings.position_embeddings(position_ids_of(base, input_ids)).detach()
                  + embeddings.token_type_embeddings(types).detach()
                  + restored.detach())
        return torch.where(kept.unsqueeze(-1), restored, filler)

    def general_loss(self, student: Features, teacher: Features, batch: dict):
        s, tau = self.settings, self.settings.tau
        full, pruned = student.extras["full"], student.extras["pruned"]
        mask = student.mask
        t_mid, t_last = teacher.hidden_states[self.teacher_layers - 1], teacher.hidden_states[self.teacher_layers]
        last = self.student_layers - 1  # index of the student's last layer in per-layer tuples

        full_nce = info_nce(real_rows(self.dense_last(full.last_hidden_state), mask), real_rows(t_mid, mask),
                            self.queue_mid.vectors, tau)
        full_att = attention_score_mse(full.attention_scores[last], teacher.extras["scores_mid"])

        kept, kept_mask = pruned.final_positions, gather_tokens(mask, pruned.final_positions)
        align_nce = info_nce(real_rows(self.dense_last(pruned.short_last_hidden_state), kept_mask),
                             real_rows(gather_tokens(t_mid, kept), kept_mask), self.queue_mid.vectors, tau)
        entering = pruned.layer_positions[last]  # the tokens the pruned student's last layer attends over
        q, k = (heads_at(teacher.extras[name], entering) for name in ("q_mid", "k_mid"))
        t_scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + additive_mask(gather_tokens(mask, entering), q.dtype)
        align_att = attention_score_mse(pruned.attention_scores[last], t_scores)

        # the teacher's frozen last layer: no weight of it trains, the gradient flows through it to the student
        predicted = layer_forward(self.teacher_last_layer, self.dense_reconstruct(student.extras["reconstruction"]),
                                  mask, want_scores=True)
        rec_nce = info_nce(real_rows(predicted["hidden"], mask), real_rows(t_last, mask), self.queue_last.vectors, tau)
        rec_att = attention_score_mse(predicted["scores"], teacher.extras["scores_last"])

        self.queue_mid.enqueue(real_rows(t_mid, mask))
        self.queue_last.enqueue(real_rows(t_last, mask))
        l_full, l_align, l_rec = full_nce + full_att, align_nce + align_att, rec_nce + rec_att
        loss = l_full + s.pruned_weight * (l_align + l_rec)
        logs = {"full_nce": full_nce, "full_att": full_att, "align_nce": align_nce, "align_att": align_att,
                "rec_nce": rec_nce, "rec_att": rec_att}
        return loss, {k: v.detach() for k, v in logs.items()}

    # ---- stage 2: task distillation ---------------------------------------------------------------------

    def task_student_forward(self, net, batch, needs) -> Features:
        _, lengths = sample_lengths(batch["input_ids"].shape[1], self.student_layers, self.settings.task_drop_ratios,
                                    self.generator, self.settings.min_tokens)
        output, base = capture_base_output(net, **batch, length_config=lengths)
        features = features_from_output(output, batch)
        features.extras["cls"] = base.last_hidden_state[:, 0]
        return features

    def task_loss(self, student: Features, teacher: Features, batch: dict):
        s = self.settings
        teacher_cls = teacher.hidden_states[self.teacher_layers][:, 0]
        total = 0.0
        logs = {}
        if s.alpha_cls > 0:
            cls_nce = info_nce(self.dense_last(student.extras["cls"]), teacher_cls, self.sentence_queue.vectors, s.tau)
            self.sentence_queue.enqueue(teacher_cls)
            total, logs["cls_nce"] = total + s.alpha_cls * cls_nce, cls_nce.detach()
        if s.alpha_pred > 0:
            pred = logit_kd(self.context.task, student, teacher, s.pred_temperature)
            total, logs["pred_kd"] = total + s.alpha_pred * pred, pred.detach()
        if s.alpha_task > 0:
            if student.task_loss is None:
                raise ConfigError("recipe.alpha_task: the batch has no labels")
            total, logs["task"] = total + s.alpha_task * student.task_loss, student.task_loss.detach()
        if not logs:
            raise ConfigError("recipe 'lad': alpha_cls, alpha_pred and alpha_task are all 0: the task stage has no loss")
        return total, logs

    def stages(self) -> list[Stage]:
        s, context = self.settings, self.context
        stages = []
        if self.corpus_files:
            pretrained = context.load_pretrained_teacher()
            check_encoder(pretrained, "teacher.path", "pretrained teacher")
            self.teacher_last_layer = pretrained.base_model.encoder.layer[-1]
            stages.append(Stage(
                "general", self.general_loss,
                modules={"dense_last": self.dense_last, "dense_reconstruct": self.dense_reconstruct,
                         "queue_mid": self.queue_mid, "queue_last": self.queue_last},
                student_needs=Needs(logits=False), teacher_needs=Needs(logits=False, hidden_states=(self.teacher_layers - 1, self.teacher_layers)),
                data=self.general_data(), labels=False, teacher=pretrained, teacher_id=context.pretrained_teacher_id,
                student_forward=self.general_student_forward, teacher_forward=self.general_teacher_forward,
                cache_teacher=False,  # the loss reads the teacher's attention scores and q/k (Features.extras)
                epochs=s.general_epochs, learning_rate=s.general_learning_rate))
        if not s.task_stage:
            if not stages:
                raise ConfigError("recipe.task_stage: false needs recipe.corpus (there would be no stage at all)")
            return stages
        train_size = len(context.task.train_dataset(context.tokenizer, context.student.config))
        batch = context.config.training.batch_size
        queue_size = max(1, min(s.sentence_queue_size, train_size - batch))
        if queue_size < s.sentence_queue_size:
            logger.info("lad: sentence queue of %d (below the %d training examples)", queue_size, train_size)
        self.sentence_queue = MemoryQueue(queue_size, self.teacher_width, context.config.training.seed + 2)
        stages.append(Stage(
            "task", self.task_loss, modules={"dense_last": self.dense_last, "sentence_queue": self.sentence_queue},
            student_needs=Needs(), teacher_needs=Needs(hidden_states=(self.teacher_layers,),
                                                      temperature=s.pred_temperature),
            labels=s.alpha_task > 0, student_forward=self.task_student_forward,
            epochs=s.task_epochs, learning_rate=s.task_learning_rate))
        return stages

    def extra_outputs(self) -> dict[str, nn.Module]:
        extras = {"dense_last": self.dense_last}
        if self.corpus_files:
            extras["dense_reconstruct"] = self.dense_reconstruct
        return extras
