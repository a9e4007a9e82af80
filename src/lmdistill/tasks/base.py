"""The Task contract: data, tokenization, collation, metrics, and how logits are compared.

A task kind is one subclass. The rest of lmdistill only talks to this interface, so a recipe never
needs to know whether it distils a classifier, a tagger, a QA model or a language model:

- `auto_class()` and `model_kwargs()` say which `AutoModelFor...` head to build;
- `train_dataset(tok)` / `eval_dataset(tok)` give tokenized `datasets.Dataset`s whose columns are
  exactly the model's inputs and labels; `collator(tok)` pads them dynamically;
- `evaluate(model, tok)` returns {"metric": name, "score": value, ...all metrics};
- `logit_pairs(student_logits, teacher_logits, batch)` returns the rows that logit KD compares,
  as a list of ([N, C] student, [N, C] teacher) tensors with padding already removed.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lmdistill.config import TaskConfig
from lmdistill.errors import DataError
from lmdistill.tasks.io import load_split

logger = logging.getLogger("lmdistill")


class Task:
    kind: str = ""
    primary_metric: str = ""
    higher_is_better: bool = True
    default_max_length: int = 128
    label_keys: tuple[str, ...] = ("labels",)
    text_format: str = "text"  # what a .txt file holds for this task (token classification: conll)

    def __init__(self, cfg: TaskConfig, search_dirs: list[Path] | None = None):
        self.cfg = cfg
        self.raw_train = load_split(cfg.train, "task.train", cfg.format, search_dirs, cfg.hub_subset,
                                    cfg.max_train_samples, self.text_format)
        self.raw_eval = load_split(cfg.eval, "task.eval", cfg.format, search_dirs, cfg.hub_subset,
                                   cfg.max_eval_samples, self.text_format)
        self._tokenized: dict[tuple, datasets.Dataset] = {}
        self.model_config = None  # the teacher's config, bound by the pipeline before any model is built
        self.setup()

    def bind(self, model_config) -> None:
        """Called once with the teacher's config, before auto_class(); e.g. LM picks masked vs causal."""
        self.model_config = model_config

    # ---- subclass hooks -------------------------------------------------------------------
    def setup(self) -> None:
        """Check columns and labels of the raw splits; raise DataError naming the file and column."""

    def auto_class(self):
        """The AutoModelFor... class of this task (may depend on self.model_config)."""
        raise NotImplementedError

    def model_kwargs(self) -> dict[str, Any]:
        return {}

    def tokenize(self, split: str, raw: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
        raise NotImplementedError

    def collator(self, tokenizer):
        raise NotImplementedError

    def compute_metrics(self, outputs: list, dataset: datasets.Dataset, split_raw: datasets.Dataset) -> dict:
        raise NotImplementedError

    def logit_pairs(self, student_logits, teacher_logits, batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def head_is_trained(self, model) -> bool:
        """Whether a loaded model's task head matches this task (else the teacher is fine-tuned)."""
        return True

    def distillation_teacher(self, teacher, tokenizer, student_config):
        """The teacher as distillation stages run it on the student's batches. Default: itself. Tasks
        whose student may read further than the teacher's positions return a windowed teacher."""
        return teacher

    # ---- shared machinery ------------------------------------------------------------------
    def single_text_column(self, default: str, what: str) -> str:
        """The one column `task.text` names (a string or a one-item list), else `default`."""
        text = self.cfg.text
        if isinstance(text, list):
            if len(text) != 1:
                raise DataError(f"task.text: {what}, got {text}")
            return text[0]
        return text or default

    def max_length(self, tokenizer, model_config=None) -> int:
        wanted = self.cfg.max_length or self.default_max_length
        from lmdistill.models.efficient import positions

        # RoBERTa-style models (and Longformer) spend padding_idx + 1 positions on no token.
        limit = positions(model_config) if model_config is not None else None
        if limit:
            if wanted > limit:
                logger.warning(
                    "task.max_length %d is longer than the model's %d positions; using %d", wanted, limit, limit
                )
                wanted = limit
        return wanted

    def _cached(self, split: str, tokenizer, model_config) -> datasets.Dataset:
        max_length = self.max_length(tokenizer, model_config)
        key = (split, getattr(tokenizer, "name_or_path", ""), len(tokenizer), max_length)
        if key not in self._tokenized:
            raw = self.raw_train if split == "train" else self.raw_eval
            self._tokenized[key] = self.tokenize(split, raw, tokenizer, max_length)
        return self._tokenized[key]

    def train_dataset(self, tokenizer, model_config=None) -> datasets.Dataset:
        return self._cached("train", tokenizer, model_config)

    def eval_dataset(self, tokenizer, model_config=None) -> datasets.Dataset:
        return self._cached("eval", tokenizer, model_config)

    @staticmethod
    def warn_truncated(split: str, lengths: list[int], max_length: int) -> None:
        over = sum(1 for n in lengths if n > max_length)
        if over:
            logger.warning(
                "%s: %d of %d examples are longer than %d tokens and were truncated", split, over, len(lengths),
                max_length,
            )

    def model_inputs(self, dataset: datasets.Dataset) -> list[str]:
        return [c for c in dataset.column_names if c not in self.label_keys and not c.startswith("_")]

    @torch.no_grad()
    def predict(self, model, tokenizer, batch_size: int = 64, desc: str = "eval") -> tuple[list, datasets.Dataset]:
        """Run the model over the eval split. Returns per-batch outputs (numpy) and the dataset used."""
        dataset = self.eval_dataset(tokenizer, model.config)
        keep = [c for c in dataset.column_names if not c.startswith("_")]
        collate = self.collator(tokenizer)
        loader = DataLoader(dataset.select_columns(keep), batch_size=batch_size, collate_fn=collate)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        outputs = []
        for batch in tqdm(loader, desc=desc, leave=False):
            batch = {k: v.to(device) for k, v in batch.items()}
            outputs.append(self.eval_step(model, batch))
        model.train(was_training)
        return outputs, dataset

    def eval_step(self, model, batch) -> Any:
        inputs = {k: v for k, v in batch.items() if k not in self.label_keys}
        return model(**inputs).logits.float().cpu().numpy()

    def evaluate(self, model, tokenizer, batch_size: int = 64, desc: str = "eval") -> dict[str, float]:
        outputs, dataset = self.predict(model, tokenizer, batch_size, desc)
        metrics = self.compute_metrics(outputs, dataset, self.raw_eval)
        metrics = {k: float(v) for k, v in metrics.items()}
        return {"metric": self.primary_metric, "score": metrics[self.primary_metric], **metrics}

    def typical_length(self, tokenizer, model_config=None) -> int:
        """The median tokenized length of the eval inputs: what latency is measured at."""
        dataset = self.eval_dataset(tokenizer, model_config)
        lengths = [len(ids) for ids in list(dataset["input_ids"])]
        return int(np.median(lengths)) if lengths else 1

    def bench_batch(self, tokenizer, batch_size: int, length: int, model_config=None) -> dict[str, torch.Tensor]:
        """Real eval inputs, cut or repeated to `batch_size` rows of exactly `length` tokens."""
        dataset = self.eval_dataset(tokenizer, model_config)
        rows = []
        for i in range(batch_size):
            ids = list(dataset[i % len(dataset)]["input_ids"])
            if len(ids) >= length:
                ids = ids[:length]
            else:  # fill with further real text rather than padding, so every position is real work
                j = i + 1
                while len(ids) < length:
                    ids += list(dataset[j % len(dataset)]["input_ids"])[1:]
                    j += 1
                ids = ids[:length]
            rows.append(ids)
        input_ids = torch.tensor(rows, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


class LabeledTask(Task):
    """A task with a closed label set learned from train (classification, token classification)."""

    labels: list[str]
    label2id: dict[str, int]

    def set_label_set(self, train_labels: list[str], eval_labels: set[str], column: str, noun: str = "label"):
        """Fix the label set (train_labels, already sorted); eval may not hold a label train never had."""
        unseen = sorted(set(eval_labels) - set(train_labels))
        if unseen:
            raise DataError(
                f"{self.cfg.eval}: {noun} '{unseen[0]}' in column '{column}' never appears in train "
                f"(train {noun}s: {', '.join(train_labels[:20])})"
            )
        if len(train_labels) < 2:
            raise DataError(f"{self.cfg.train}: column '{column}' has fewer than two distinct {noun}s")
        self.labels = list(train_labels)
        self.label2id = {label: i for i, label in enumerate(self.labels)}

    def model_kwargs(self) -> dict[str, Any]:
        return {"num_labels": len(self.labels), "id2label": dict(enumerate(self.labels)),
                "label2id": dict(self.label2id)}

    def head_is_trained(self, model) -> bool:
        id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
        return id2label == dict(enumerate(self.labels))


def masked_rows(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor):
    """Select rows [N, C] of [B, L, C] logits where mask [B, L] is true."""
    keep = mask.bool()
    return student[keep], teacher[keep]


def perplexity(nll_sum: float, count: int) -> float:
    return math.exp(nll_sum / max(count, 1)) if count else float("inf")
