"""Sequence classification, single sentence or sentence pair. Metric: accuracy (+ macro-F1 for >2 classes)."""

from __future__ import annotations

import datasets
import numpy as np
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from lmdistill.errors import DataError
from lmdistill.tasks.base import LabeledTask


def macro_f1(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    scores = []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (gold == c))
        fp = np.sum((pred == c) & (gold != c))
        fn = np.sum((pred != c) & (gold == c))
        if tp + fp + fn == 0:
            continue  # class absent from both: it does not count
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


class ClassificationTask(LabeledTask):
    kind = "classification"
    primary_metric = "accuracy"

    def setup(self) -> None:
        cfg = self.cfg
        columns = [cfg.text] if isinstance(cfg.text, str) else list(cfg.text or [])
        if not columns:
            raise DataError("task.text: name the text column (or a list of two for sentence pairs)")
        if len(columns) > 2:
            raise DataError(f"task.text: at most two text columns, got {columns}")
        if cfg.label is None:
            raise DataError("task.label: name the label column")
        self.text_columns = columns
        for split, raw, source in (("train", self.raw_train, cfg.train), ("eval", self.raw_eval, cfg.eval)):
            for column in [*columns, cfg.label]:
                if column not in raw.column_names:
                    key = "task.label" if column == cfg.label else "task.text"
                    raise DataError(
                        f"{source}: no column '{column}' (columns: {', '.join(raw.column_names)}); set {key}"
                    )
        train_labels = sorted({str(v) for v in self.raw_train[cfg.label]}, key=_label_sort_key)
        self.set_label_set(train_labels, {str(v) for v in self.raw_eval[cfg.label]}, cfg.label)

    def auto_class(self):
        return AutoModelForSequenceClassification

    def tokenize(self, split, raw, tokenizer, max_length):
        texts = [list(raw[c]) for c in self.text_columns]
        full = tokenizer(*texts, truncation=False)
        self.warn_truncated(split, [len(ids) for ids in full["input_ids"]], max_length)
        encoded = tokenizer(*texts, truncation=True, max_length=max_length)
        columns = {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        columns["labels"] = [self.label2id[str(v)] for v in list(raw[self.cfg.label])]
        return datasets.Dataset.from_dict(columns)

    def collator(self, tokenizer):
        return DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def compute_metrics(self, outputs, dataset, split_raw) -> dict:
        logits = np.concatenate(outputs, axis=0)
        pred = logits.argmax(-1)
        gold = np.asarray(list(dataset["labels"]))
        metrics = {"accuracy": float((pred == gold).mean())}
        if len(self.labels) > 2:
            metrics["macro_f1"] = macro_f1(pred, gold, len(self.labels))
        return metrics

    def logit_pairs(self, student_logits, teacher_logits, batch):
        return [(student_logits, teacher_logits)]


def _label_sort_key(label: str):
    # Numeric labels sort numerically ("2" before "10"); others alphabetically.
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)

