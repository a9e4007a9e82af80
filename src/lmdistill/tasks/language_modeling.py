"""Language modelling, masked (BERT-style MLM) or causal (next token). Metric: perplexity (lower is better).

`task.lm_type: auto` follows the teacher's config (bound by the pipeline before the model is built):
causal when its `architectures` name a `...CausalLM`, or `is_decoder` is set; masked when they name a
`...MaskedLM`/`...ForPreTraining`; otherwise masked if the model type has a masked-LM head, else causal.

Data: plain text (one row per non-empty line) or jsonl with `task.text` naming the column (default
`text`). Every line is tokenized without special tokens; the lines are concatenated, separated by
EOS (causal) or SEP (masked) when the tokenizer has one, and cut into blocks of `task.block_size`
(default `task.max_length`, 128) tokens; the last partial block is dropped. Masked blocks are
wrapped as `[CLS] ... [SEP]` (the block still has `block_size` tokens in all).

Causal: labels are the input ids (the model shifts them). Masked: training blocks are masked anew
in every batch (DataCollatorForLanguageModeling, `task.mlm_probability`); eval blocks are masked
once, at tokenize time, with a fixed-seed generator (80% [MASK], 10% random token, 10% unchanged),
so the perplexity of two models is measured on exactly the same masked positions.

Perplexity = exp(summed token NLL / number of predicted tokens) over the eval split: for causal,
every block position but the first; for masked, the masked positions. `nll` is the mean NLL.
"""

from __future__ import annotations

import math

import datasets
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
    DataCollatorForTokenClassification,
)

from lmdistill.errors import ConfigError, DataError
from lmdistill.tasks.base import Task, masked_rows, perplexity
from lmdistill.tasks.io import Split

IGNORE = -100
EVAL_MASK_SEED = 1234
LOGIT_ELEMENTS_PER_CHUNK = 1 << 25  # eval runs the model on row chunks of at most ~128 MiB of fp32 logits


def resolve_lm_type(model_config) -> str:
    """"causal" or "masked" for a model config (see the module docstring for the rule)."""
    architectures = [str(a) for a in (getattr(model_config, "architectures", None) or [])]
    if any("CausalLM" in a for a in architectures):
        return "causal"
    if any("MaskedLM" in a or "ForPreTraining" in a for a in architectures):
        return "masked"
    if getattr(model_config, "is_decoder", False):
        return "causal"
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(model_config, "model_type", "")
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "masked"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal"
    return "masked"


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, mask_id: int, vocab_size: int, probability: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking with a given generator: returns (masked input ids, labels with -100 where unmasked)."""
    labels = input_ids.clone()
    chosen = torch.bernoulli(torch.full(input_ids.shape, probability), generator=generator).bool() & ~special
    labels[~chosen] = IGNORE
    masked = input_ids.clone()
    replace = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool() & chosen
    masked[replace] = mask_id
    randomize = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool() & chosen & ~replace
    masked[randomize] = torch.randint(vocab_size, input_ids.shape, generator=generator)[randomize]
    return masked, labels


def text_blocks(lines: list[str], tokenizer, block_size: int, causal: bool, source: str = "text",
                key: str = "task.block_size") -> list[list[int]]:
    """Token blocks of exactly `block_size` from lines of text (see the module docstring).

    Every line is tokenized without special tokens; lines are joined with EOS (causal) or SEP (masked)
    when the tokenizer has one and cut into blocks; the last partial block is dropped. Masked blocks
    are wrapped as [CLS] ... [SEP] when the tokenizer has both (still `block_size` tokens in all).
    """
    ids = tokenizer(lines, add_special_tokens=False, verbose=False)["input_ids"]
    separator = tokenizer.eos_token_id if causal else tokenizer.sep_token_id
    stream: list[int] = []
    for line_ids in ids:
        stream.extend(line_ids)
        if separator is not None:
            stream.append(separator)
    wrap = (not causal) and tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None
    body = block_size - 2 if wrap else block_size
    if body < 1:
        raise ConfigError(f"{key}: {block_size} tokens leave no room for text")
    count = len(stream) // body
    if count == 0:
        raise DataError(
            f"{source}: only {len(stream)} tokens, fewer than one block of {block_size}; "
            f"give more text or lower {key}"
        )
    blocks = [stream[i * body:(i + 1) * body] for i in range(count)]
    if wrap:
        blocks = [[tokenizer.cls_token_id, *b, tokenizer.sep_token_id] for b in blocks]
    return blocks


class LMCollator:
    """Pads blocks that carry labels (causal, and the pre-masked eval blocks); masks the others (MLM train)."""

    def __init__(self, tokenizer, mlm_probability: float | None):
        self.pad = DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE, return_tensors="pt")
        self.mlm = None if mlm_probability is None else DataCollatorForLanguageModeling(
            tokenizer, mlm=True, mlm_probability=mlm_probability, return_tensors="pt")

    def __call__(self, features):
        if "labels" in features[0] or self.mlm is None:
            return self.pad(features)
        return self.mlm(features)


class LanguageModelingTask(Task):
    kind = "language-modeling"
    primary_metric = "perplexity"
    higher_is_better = False

    def check_columns(self, split: Split) -> None:
        text = self.text_column = self.single_text_column("text", "language modelling reads one text column")
        if text not in split.data.column_names:
            raise DataError(f"{split.source}: no column '{text}' (columns: {', '.join(split.data.column_names)}); "
                            "set task.text")

    def clean(self, name, split, skips):
        """jsonl rows with no text or empty text are skipped with a count (plain text files have no such
        rows: their blank lines are not rows); a cell that is not text is an error naming the line."""
        keep = []
        for i, cell in enumerate(split.data[self.text_column]):
            if cell is not None and not isinstance(cell, str):
                raise DataError(f"{split.at(i)}: column '{self.text_column}' holds {type(cell).__name__} "
                                f"{cell!r:.40}, not text")
            if cell is None or not cell.strip():
                skips.add(f"{'no' if cell is None else 'empty'} text in column '{self.text_column}'", split.at(i))
            else:
                keep.append(i)
        return split.select(keep)

    # ---- masked or causal ---------------------------------------------------------------------
    @property
    def lm_type(self) -> str:
        if self.cfg.lm_type != "auto":
            return self.cfg.lm_type
        if self.model_config is None:
            raise ConfigError("task.lm_type: 'auto' needs the teacher's config (task.bind); set masked or causal")
        return resolve_lm_type(self.model_config)

    @property
    def causal(self) -> bool:
        return self.lm_type == "causal"

    @property
    def static_train_inputs(self) -> bool:  # masked LM training blocks are masked anew in every batch
        return self.causal

    def auto_class(self):
        return AutoModelForCausalLM if self.causal else AutoModelForMaskedLM

    # ---- data ---------------------------------------------------------------------------------
    def max_length(self, tokenizer, model_config=None) -> int:
        """The block size: task.block_size, else task.max_length, else 128; capped at the model's positions."""
        if not self.cfg.block_size:
            return super().max_length(tokenizer, model_config)
        saved = self.cfg
        self.cfg = saved.model_copy(update={"max_length": saved.block_size})
        try:
            return super().max_length(tokenizer, model_config)
        finally:
            self.cfg = saved

    @staticmethod
    def _ensure_pad(tokenizer) -> None:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    def tokenize(self, split, raw, tokenizer, max_length):
        self._ensure_pad(tokenizer)
        causal = self.causal
        lines = [str(t) for t in raw[self.text_column]]
        source = self.cfg.train if split == "train" else self.cfg.eval
        blocks = text_blocks(lines, tokenizer, max_length, causal, source, "task.block_size")
        columns = {"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks]}
        if causal:
            columns["labels"] = [list(b) for b in blocks]
        elif split != "train":
            self._check_mask_token(tokenizer)
            input_ids = torch.tensor(blocks, dtype=torch.long)
            special = torch.tensor(
                [tokenizer.get_special_tokens_mask(b, already_has_special_tokens=True) for b in blocks],
                dtype=torch.bool,
            )
            generator = torch.Generator().manual_seed(EVAL_MASK_SEED)
            masked, labels = mask_tokens(input_ids, special, tokenizer.mask_token_id, len(tokenizer),
                                         self.cfg.mlm_probability, generator)
            columns["input_ids"] = masked.tolist()
            columns["labels"] = labels.tolist()
        return datasets.Dataset.from_dict(columns)

    def collator(self, tokenizer):
        self._ensure_pad(tokenizer)
        if self.causal:
            return LMCollator(tokenizer, None)
        self._check_mask_token(tokenizer)
        return LMCollator(tokenizer, self.cfg.mlm_probability)

    @staticmethod
    def _check_mask_token(tokenizer) -> None:
        if tokenizer.mask_token_id is None:
            raise ConfigError("task.lm_type: masked language modelling needs a tokenizer with a mask token; "
                              "set task.lm_type: causal for this model")

    # ---- metrics ------------------------------------------------------------------------------
    def eval_step(self, model, batch):
        """(summed token NLL, token count) of the batch; the [B, L, V] logits are never kept."""
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k not in self.label_keys}
        rows = max(1, LOGIT_ELEMENTS_PER_CHUNK // max(1, labels.shape[1] * model.config.vocab_size))
        nll, count = 0.0, 0
        for begin in range(0, labels.shape[0], rows):
            chunk = {k: v[begin:begin + rows] for k, v in inputs.items()}
            gold = labels[begin:begin + rows]
            logits = model(**chunk).logits
            if self.causal:
                logits, gold = logits[:, :-1], gold[:, 1:]
            nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), gold.reshape(-1),
                                   ignore_index=IGNORE, reduction="sum").item()
            count += int((gold != IGNORE).sum().item())
        return nll, count

    def compute_metrics(self, outputs, dataset, split_raw) -> dict:
        nll = sum(n for n, _ in outputs)
        count = sum(c for _, c in outputs)
        mean = nll / count if count else math.inf
        # exp() overflows past ~709 nats per token (a diverged model): report inf rather than crash.
        return {"perplexity": perplexity(nll, count) if mean < 700 else math.inf, "nll": mean}

    def logit_pairs(self, student_logits, teacher_logits, batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [masked_rows(student_logits, teacher_logits, batch.mask)]
