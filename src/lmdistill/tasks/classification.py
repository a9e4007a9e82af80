"""Sequence classification, single sentence or sentence pair. Metric: accuracy (+ macro-F1 for >2 classes)."""

from __future__ import annotations

import datasets
import numpy as np
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from lmdistill.errors import DataError
from lmdistill.tasks.base import LabeledTask, label_text
from lmdistill.tasks.io import Split


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

    def check_columns(self, split: Split) -> None:
        cfg = self.cfg
        columns = [cfg.text] if isinstance(cfg.text, str) else list(cfg.text or [])
        if not columns:
            raise DataError("task.text: name the text column (or a list of two for sentence pairs)")
        if len(columns) > 2:
            raise DataError(f"task.text: at most two text columns, got {columns}")
        if cfg.label is None:
            raise DataError("task.label: name the label column")
        self.text_columns = columns
        for column in [*columns, cfg.label]:
            if column not in split.data.column_names:
                key = "task.label" if column == cfg.label else "task.text"
                raise DataError(
                    f"{split.source}: no column '{column}' (columns: {', '.join(split.data.column_names)}); set {key}"
                )

    def clean(self, name, split, skips):
        """A row with no text or empty text (in any text column), or no label, is skipped with a count;
        a text cell that is not text, or a label that is a list, is an error naming the line."""
        label_column = self.cfg.label
        texts = {c: list(split.data[c]) for c in self.text_columns}
        labels = list(split.data[label_column])
        keep, found = [], {}
        for i, value in enumerate(labels):
            place = split.at(i)
            reason = None
            for column, cells in texts.items():
                cell = cells[i]
                if cell is None:
                    reason = f"no text in column '{column}'"
                elif not isinstance(cell, str):
                    raise DataError(f"{place}: column '{column}' holds {type(cell).__name__} {cell!r:.40}, not text")
                elif not cell.strip():
                    reason = f"empty text in column '{column}'"
                if reason:
                    break
            label = label_text(value, label_column, place)
            if reason is None and (label is None or not label.strip()):
                reason = f"no label in column '{label_column}'"
            if reason:
                skips.add(reason, place)
                continue
            keep.append(i)
            found.setdefault(label, place)
        self.note_labels(name, found, label_column)
        return split.select(keep)

    def setup(self) -> None:
        label = self.cfg.label
        train_labels = sorted({str(v) for v in self.raw_train[label]}, key=_label_sort_key)
        self.set_label_set(train_labels, {str(v) for v in self.raw_eval[label]}, label)

    def model_kwargs(self) -> dict:
        # Set now rather than by the model's first forward with labels (transformers does that): a run
        # resumed after its last training step would otherwise save a config without it.
        return {**super().model_kwargs(), "problem_type": "single_label_classification"}

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
        return class_metrics(outputs, dataset, len(self.labels))

    def logit_pairs(self, student_logits, teacher_logits, batch):
        return [(student_logits, teacher_logits)]


def class_metrics(outputs: list[np.ndarray], dataset, num_labels: int) -> dict:
    """Accuracy (and macro-F1 beyond two classes) of per-class scores [N, C] against dataset["labels"]."""
    pred = np.concatenate(outputs, axis=0).argmax(-1)
    gold = np.asarray(list(dataset["labels"]))
    metrics = {"accuracy": float((pred == gold).mean())}
    if num_labels > 2:
        metrics["macro_f1"] = macro_f1(pred, gold, num_labels)
    return metrics


def _label_sort_key(label: str):
    # Numeric labels sort numerically ("2" before "10"); others alphabetically.
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)

