"""`glmd`: General Language Model Distillation (Tan et al., Findings of ACL 2023; official code aitsc/GLMKD).

The student learns from the teacher's *word predictions* only: no intermediate layers, and no gold label
in any stage (every stage is `labels=False`: the label columns are removed from its batches). Stages,
each skippable with `stages: [...]`:

1. **General word-prediction KD** (`glmd-general`), on raw text (`corpus`, or the task's training text
   for a language-modelling task), from the *pretrained* teacher:
       T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) over the vocabulary, averaged over every real
       (non-padding) position, T = 15.
   Causal LMs: the next-token distribution at every position. Masked LMs: the distribution at every
   position of a BERT-masked block (15% of the tokens chosen anew each batch, 80% [MASK] / 10% random /
   10% kept; `mlm_probability`); teacher and student see the same corrupted block. The official code
   feeds GLM's blank-infilling inputs instead; BERT masking is the masked-LM equivalent we have.
2. **Task word-prediction KD** (`glmd-task-words`): the same loss on the task's inputs formatted as
   prompts (`task.kind: prompt-classification`), from the teacher fine-tuned on the task.
3. **Soft-label KD** (`glmd-soft-labels`): T^2 * KL between the teacher's and the student's class
   distributions (the verbalizer scores of the prompt), T = `soft_temperature` = 1. The official code
   uses the soft cross-entropy -sum p_t log p_s, which differs from this KL by the teacher's entropy, a
   constant: the gradients are the same.

**Teacher-output cache.** Stages 1-2 read the teacher's whole distribution at T = 15, where a top-k cache
(`training.cache_top_k`) is a poor approximation (at T = 15 most of the mass is outside any small top-k),
and with a compressed vocabulary they read it at the kept columns: these stages always run the teacher
live (`Stage.cache_teacher=False`). Stage 3 reads the class scores, which the cache stores exactly.

**Vocabulary compression** (`vocab_keep` < 1, see `lmdistill.models.vocab`): before stage 1 the tokens
are ranked by frequency on `vocab_corpus` (default: the stage-1 corpus plus the task's prompts), the
most frequent `vocab_keep` (fraction or count, rounded up to a multiple of 64) are kept together with the
special, verbalizer and single-character tokens, and the student's embedding and LM head shrink to them.
The KL of stages 1-2 then reads the teacher's logits at the kept columns only, renormalised.
`dropped_tokens` says what the student sees where the text has a dropped token:
- `substitute` (the official code): the text is tokenized as the teacher tokenizes it; the student gets
  each dropped token's substitute (the kept token with the largest teacher-embedding dot product).
- `split`: the text is tokenized by the compressed tokenizer saved with the student, which spells a
  dropped token with kept pieces; the teacher reads the same pieces. Training then sees exactly what the
  saved student will see (a plain tokenizer file cannot express substitutes; see `vocab_tokenizer.py`).
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, field_validator
from torch import nn

from lmdistill.config import RecipeConfig
from lmdistill.errors import ConfigError
from lmdistill.losses import kd_kl, kept_kd_kl
from lmdistill.models.features import Features, batch_mask
from lmdistill.models.vocab import VocabMap, count_tokens, resolve_keep
from lmdistill.recipes.base import Needs, Recipe, Stage, StageData

logger = logging.getLogger("lmdistill")
LM_HEAD_ARCHITECTURES = ("CausalLM", "MaskedLM", "ForPreTraining", "LMHeadModel", "ForConditionalGeneration")


class GLMDSettings(RecipeConfig):
    stages: list[Literal[1, 2, 3]] | None = None  # None: every stage the task allows (language modelling: [1])
    corpus: str | list[str] | None = None  # stage 1 text files or globs; default: the LM task's training text
    corpus_max_tokens: int | None = Field(None, ge=1)  # read the corpus only up to this many tokens
    block_size: int | None = Field(None, ge=8)  # stage 1 tokens per block (default task.max_length, else 128)
    temperature: float = Field(15.0, gt=0)  # stages 1-2 (the paper's T = 15)
    soft_temperature: float = Field(1.0, gt=0)  # stage 3
    mlm_probability: float = Field(0.15, gt=0, lt=1)  # masked LMs: stage 1 masking rate
    vocab_keep: float = Field(1.0, gt=0)  # fraction (0, 1] or count (> 1) of the vocabulary to keep; 1 = no compression
    vocab_corpus: str | list[str] | None = None  # files to rank tokens on (default: corpus + task prompts)
    vocab_substitute: Literal["dot", "cosine", "unk"] = "dot"
    vocab_multiple: int = Field(64, ge=1)
    dropped_tokens: Literal["substitute", "split"] = "substitute"
    general_epochs: float | None = Field(None, gt=0)  # per stage; None = training.epochs / training.learning_rate
    general_learning_rate: float | None = Field(None, gt=0, le=1)
    task_epochs: float | None = Field(None, gt=0)
    task_learning_rate: float | None = Field(None, gt=0, le=1)
    soft_epochs: float | None = Field(None, gt=0)
    soft_learning_rate: float | None = Field(None, gt=0, le=1)

    @field_validator("vocab_keep")
    @classmethod
    def _keep_range(cls, value: float) -> float:
        if not value > 0 or (value > 1 and value != int(value)):
            raise ValueError(f"{value} is outside (0, 1]; give a fraction of the vocabulary, or a whole token count")
        return value


class VocabMapBuffers(nn.Module):
    """The vocabulary map as tensors, saved to extras/vocab_map.safetensors."""

    def __init__(self, vmap: VocabMap):
        super().__init__()
        self.register_buffer("kept_ids", vmap.kept_ids.clone())
        self.register_buffer("substitutes", vmap.substitutes.clone())


def has_lm_head(config) -> bool:
    architectures = list(getattr(config, "architectures", None) or [])
    return not architectures or any(any(k in a for k in LM_HEAD_ARCHITECTURES) for a in architectures)


class GLMDRecipe(Recipe):
    name = "glmd"
    settings_class = GLMDSettings

    def __init__(self, settings: GLMDSettings, context):
        super().__init__(settings, context)
        self.vmap: VocabMap | None = None
        self.compressed_tokenizer = None
        self.numbers = self.check()

    # ---- checks, before anything is written ---------------------------------------------------
    def check(self) -> list[int]:
        s, ctx = self.settings, self.context
        kind = ctx.task.kind
        if kind not in ("language-modeling", "prompt-classification"):
            raise ConfigError(f"recipe: glmd distils word predictions; task.kind must be language-modeling or "
                              f"prompt-classification, not {kind}")
        if not has_lm_head(ctx.teacher.config):
            arch = ctx.teacher.config.architectures[0]
            raise ConfigError(f"teacher.path: glmd distils the teacher's word predictions, but the teacher is a "
                              f"{arch} with no language-model head; give a ...ForCausalLM or ...ForMaskedLM checkpoint")
        done = getattr(ctx.student, "_glmd_compression", None)  # compressed by an earlier recipe object
        teacher_vocab = ctx.teacher.config.vocab_size
        student_vocab = done[0].original_size if done is not None else ctx.student.config.vocab_size
        if teacher_vocab != student_vocab:
            raise ConfigError(f"student: its vocabulary ({student_vocab} tokens) differs from the teacher's "
                              f"({teacher_vocab}); glmd compares their word predictions token by token")
        numbers = sorted(set(s.stages)) if s.stages is not None else (
            [1] if kind == "language-modeling" else ([1, 2, 3] if s.corpus else [2, 3]))
        if not numbers:
            raise ConfigError("recipe.stages: give at least one of 1, 2, 3")
        if kind == "language-modeling" and numbers != [1]:
            raise ConfigError("recipe.stages: stages 2 and 3 read prompts and verbalizers; use task.kind: "
                              "prompt-classification, or stages: [1]")
        if 1 in numbers and kind != "language-modeling" and not s.corpus:
            raise ConfigError("recipe.corpus: stage 1 (general distillation) needs text files; give a corpus, "
                              "or stages: [2, 3]")
        if s.corpus:
            from lmdistill.tasks.corpus import resolve_corpus

            self.corpus_files = resolve_corpus(s.corpus, "recipe.corpus", ctx.search_dirs)
        if s.vocab_corpus:
            from lmdistill.tasks.corpus import resolve_corpus

            resolve_corpus(s.vocab_corpus, "recipe.vocab_corpus", ctx.search_dirs)
        resolve_keep(s.vocab_keep, teacher_vocab, s.vocab_multiple)
        return numbers

    @property
    def causal(self) -> bool:
        return self.context.task.auto_class().__name__.endswith("CausalLM")

    # ---- the stages ---------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        s, ctx = self.settings, self.context
        general_teacher, general_id = self.general_teacher()
        self.compress(general_teacher if general_teacher is not None else ctx.teacher)
        needs = Needs(temperature=s.temperature)
        stages = []
        if 1 in self.numbers:
            stages.append(Stage("glmd-general", self.word_loss, data=self.general_data(), labels=False,
                                teacher=general_teacher, teacher_id=general_id, teacher_needs=needs,
                                cache_teacher=False,
                                student_forward=self.student_words, teacher_forward=self.teacher_words,
                                epochs=s.general_epochs, learning_rate=s.general_learning_rate))
        if 2 in self.numbers:
            stages.append(Stage("glmd-task-words", self.word_loss, data=self.task_data(), labels=False,
                                teacher_needs=needs, cache_teacher=False, student_forward=self.student_words,
                                teacher_forward=self.teacher_words, epochs=s.task_epochs,
                                learning_rate=s.task_learning_rate))
        if 3 in self.numbers:
            stages.append(Stage("glmd-soft-labels", self.soft_loss, data=self.task_data(), labels=False,
                                teacher_needs=Needs(temperature=s.soft_temperature),
                                student_forward=self.student_classes, teacher_forward=self.teacher_classes,
                                epochs=s.soft_epochs, learning_rate=s.soft_learning_rate))
        return stages

    def general_teacher(self):
        """(teacher module or None for the pipeline's, its cache id) of stage 1: the pretrained teacher.
        The pipeline's teacher is the pretrained one when it was not fine-tuned on the task."""
        ctx = self.context
        if 1 not in self.numbers:
            return None, None
        task = ctx.task
        if task.kind == "language-modeling" and ctx.config.teacher.finetune != "always":
            return None, None
        if task.kind == "prompt-classification" and not task.head_is_trained(ctx.teacher):
            return None, None
        return ctx.load_pretrained_teacher(), ctx.pretrained_teacher_id

    # ---- losses -------------------------------------------------------------------------------
    def word_loss(self, student: Features, teacher: Features, batch: dict):
        """Stages 1-2: T^2 KL of the word distributions at every real position (kept columns only)."""
        keep = student.mask.bool()
        kept_ids = self.vmap.kept_ids if self.vmap is not None else None
        value = kept_kd_kl(student.logits[keep], teacher.logits[keep], kept_ids, self.settings.temperature)
        return value, {"word_kd": value.detach()}

    def soft_loss(self, student: Features, teacher: Features, batch: dict):
        """Stage 3: T^2 KL of the class distributions (verbalizer scores)."""
        value = kd_kl(student.logits, teacher.logits, self.settings.soft_temperature)
        return value, {"soft_kd": value.detach()}

    # ---- forward passes: ids in the batch are the teacher's (substitute) or the student's (split) --
    def _student_batch(self, batch: dict) -> dict:
        if self.vmap is None or self.settings.dropped_tokens == "split":
            return batch
        return {**batch, "input_ids": self.vmap.to_new(batch["input_ids"])}

    def _teacher_batch(self, batch: dict) -> dict:
        if self.vmap is None or self.settings.dropped_tokens == "substitute":
            return batch
        return {**batch, "input_ids": self.vmap.to_original(batch["input_ids"])}

    @staticmethod
    def _words(net, batch: dict) -> Features:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return Features(logits=net(**inputs).logits, hidden_states=(), attentions=None, mask=batch_mask(batch),
                        task_loss=None)

    def student_words(self, net, batch, needs=None) -> Features:
        return self._words(net, self._student_batch(batch))

    def teacher_words(self, teacher, batch, needs=None) -> Features:
        return self._words(teacher, self._teacher_batch(batch))

    def _classes(self, net, batch: dict, verbalizer_ids) -> Features:
        logits, _ = self.context.task.answer_logits(net, batch)
        scores = self.context.task.class_scores(logits, verbalizer_ids)
        return Features(logits=scores, hidden_states=(), attentions=None, mask=batch_mask(batch), task_loss=None)

    def student_classes(self, net, batch, needs=None) -> Features:
        ids = self.context.task.verbalizer_ids
        if self.vmap is not None:
            ids = [[int(self.vmap.old_to_new[i]) for i in row] for row in ids]
        return self._classes(net, self._student_batch(batch), ids)

    def teacher_classes(self, teacher, batch, needs=None) -> Features:
        return self._classes(teacher, self._teacher_batch(batch), self.context.task.verbalizer_ids)

    # ---- data ---------------------------------------------------------------------------------
    def data_tokenizer(self):
        """The tokenizer that makes the stages' batches: the compressed one in `split` mode."""
        if self.vmap is not None and self.settings.dropped_tokens == "split":
            return self.compressed_tokenizer
        return self.context.tokenizer

    def general_data(self) -> StageData:
        from lmdistill.tasks.corpus import corpus_dataset
        from lmdistill.tasks.language_modeling import LMCollator

        s, ctx, task = self.settings, self.context, self.context.task
        tokenizer = self.data_tokenizer()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not s.corpus:  # a language-modelling task: its own training text
            return StageData(task.train_dataset(tokenizer, ctx.teacher.config), task.collator(tokenizer),
                             name="task-text", static=self.causal)
        block = s.block_size or task.max_length(tokenizer, ctx.teacher.config)
        dataset = corpus_dataset(self.corpus_files, tokenizer, block, self.causal, s.corpus_max_tokens)
        collator = LMCollator(tokenizer, None if self.causal else s.mlm_probability)
        return StageData(dataset, collator, name="corpus", static=self.causal)

    def task_data(self) -> StageData:
        task, tokenizer = self.context.task, self.data_tokenizer()
        return StageData(task.train_dataset(tokenizer, self.context.teacher.config), task.collator(tokenizer),
                         name="task-inputs")

    # ---- vocabulary compression ---------------------------------------------------------------
    def ranking_texts(self) -> list[str]:
        """What token frequencies are counted on: vocab_corpus, else the stage-1 text plus the task prompts."""
        from lmdistill.tasks.corpus import read_paragraphs, resolve_corpus

        s, ctx, task = self.settings, self.context, self.context.task
        texts: list[str] = []
        if s.vocab_corpus:
            files = resolve_corpus(s.vocab_corpus, "recipe.vocab_corpus", ctx.search_dirs)
        else:
            files = getattr(self, "corpus_files", [])
        for path in files:
            texts.extend(read_paragraphs(path))
        if not s.vocab_corpus and task.kind == "language-modeling":
            texts.extend(str(t) for t in task.raw_train[task.text_column])
        if task.kind == "prompt-classification":
            columns = [list(task.raw_train[c]) for c in task.text_columns]
            texts.extend(task.prompt([str(t) for t in row], ctx.tokenizer) for row in zip(*columns))
        return texts

    def compress(self, embedding_source) -> None:
        """Shrink the student's vocabulary (in place) when vocab_keep < 1; see lmdistill.models.vocab."""
        from lmdistill.models.vocab_tokenizer import compress_model, structure

        s, ctx = self.settings, self.context
        done = getattr(ctx.student, "_glmd_compression", None)
        if done is not None:
            # The pipeline builds the stages twice (once to check their training settings before anything
            # is written, once to train) and may keep the same student object: compress it once.
            self.vmap, self.compressed_tokenizer = done
            return
        vocab_size = ctx.student.get_input_embeddings().weight.shape[0]
        keep = resolve_keep(s.vocab_keep, vocab_size, s.vocab_multiple)
        if keep >= vocab_size:
            return
        tokenizer = ctx.tokenizer
        counts = count_tokens(tokenizer, self.ranking_texts(), vocab_size)
        forced, parts = structure(tokenizer)
        if ctx.task.kind == "prompt-classification":
            forced |= {i for row in ctx.task.verbalizer_ids for i in row}
        done = compress_model(ctx.student, tokenizer, counts, keep, forced, parts,
                              embedding_source.get_input_embeddings().weight, s.vocab_substitute,
                              {"dropped_tokens": s.dropped_tokens})
        self.vmap, self.compressed_tokenizer = done.vmap, done.tokenizer
        ctx.student._glmd_compression = (self.vmap, self.compressed_tokenizer)
        logger.info("vocabulary: kept %d of %d tokens (%.2f%% of the ranking corpus's tokens); student embedding "
                    "parameters %.2fM -> %.2fM, rest %.2fM", self.vmap.kept_size, vocab_size, 100 * done.coverage,
                    done.before["embedding"] / 1e6, done.after["embedding"] / 1e6, done.after["rest"] / 1e6)

    def student_tokenizer(self, tokenizer):
        return self.compressed_tokenizer if self.compressed_tokenizer is not None else tokenizer

    def extra_outputs(self) -> dict[str, nn.Module]:
        return {"vocab_map": VocabMapBuffers(self.vmap)} if self.vmap is not None else {}
