"""Task-agnostic distillation on raw text before the recipe's stages (`student.general`).

For efficient-attention students (the review by Brown et al. distils the converted student on a
corpus before the task): the student learns to reproduce the *pretrained* teacher's hidden states on
long raw text, with a mix of long passages (the student's `max_length`) and short ones (512 tokens),
which the review found to work best. Loss: the mean over mapped layers of 1 - cosine similarity
between student and teacher hidden states per real token (DistilBERT's cosine term; the review's
exact weights are not known, and no MLM term is used here). Labels are never read.

A teacher with fewer positions than a long passage reads it in windows, hidden states merged per
token (models/windowed.py). The stage then hands the student to the recipe's own stages.
"""

from __future__ import annotations

import datasets
from transformers import DataCollatorWithPadding

from lmdistill.config import GeneralDistillationConfig
from lmdistill.losses import masked_cosine
from lmdistill.models.efficient import positions
from lmdistill.models.windowed import WindowedTeacher
from lmdistill.recipes.base import Needs, RecipeContext, Stage, StageData, resolve_layer_map
from lmdistill.tasks.corpus import corpus_dataset, resolve_corpus

KEY = "student.general"


def corpus_mix(cfg: GeneralDistillationConfig, files, tokenizer, long_length: int) -> datasets.Dataset:
    """Long blocks (from the files in order) and short blocks (from the files in reverse order, so the
    two parts read different text when there are several files), `short_fraction` of the tokens short."""
    short_tokens = int(cfg.max_tokens * cfg.short_fraction)
    parts = []
    if cfg.max_tokens - short_tokens >= long_length:
        parts.append(corpus_dataset(files, tokenizer, long_length, False, cfg.max_tokens - short_tokens,
                                    f"{KEY}.corpus"))
    if short_tokens >= cfg.short_length:
        parts.append(corpus_dataset(list(reversed(files)), tokenizer, cfg.short_length, False, short_tokens,
                                    f"{KEY}.corpus"))
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def general_stage(cfg: GeneralDistillationConfig, context: RecipeContext) -> Stage:
    """The corpus stage: student hidden states -> the pretrained teacher's (cosine), no labels."""
    student, tokenizer = context.student, context.tokenizer
    files = resolve_corpus(cfg.corpus, f"{KEY}.corpus", context.search_dirs)
    long_length = cfg.long_length or positions(student.config)
    dataset = corpus_mix(cfg, files, tokenizer, long_length)
    layer_map = resolve_layer_map(cfg.layer_map, context.student_layers, context.teacher_layers)
    teacher = context.load_pretrained_teacher()
    window = positions(teacher.config)
    if long_length > window:  # its window settings go into the teacher-output cache key (cache_id)
        teacher = WindowedTeacher(teacher, window, overlap=min(128, window // 4))

    def loss(student_features, teacher_features, batch):
        distance = sum(masked_cosine(student_features.hidden_states[s], teacher_features.hidden_states[t],
                                     student_features.mask) for s, t in layer_map) / len(layer_map)
        return distance, {"cosine": distance.detach()}

    data = StageData(dataset, DataCollatorWithPadding(tokenizer, return_tensors="pt"),
                     name=f"corpus-{long_length}-{cfg.short_length}-{cfg.max_tokens}-{cfg.short_fraction}")
    return Stage("general", loss, student_needs=Needs(logits=False, hidden_states=[s for s, _ in layer_map]),
                 teacher_needs=Needs(logits=False, hidden_states=[t for _, t in layer_map]), data=data,
                 labels=False, teacher=teacher, teacher_id=context.pretrained_teacher_id, epochs=cfg.epochs,
                 learning_rate=cfg.learning_rate)
