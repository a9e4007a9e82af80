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
import re
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lmdistill.bench import model_device
from lmdistill.config import TaskConfig
from lmdistill.errors import DataError
from lmdistill.tasks.io import Skips, Split, load_rows

logger = logging.getLogger("lmdistill")


class Task:
    kind: str = ""
    primary_metric: str = ""
    higher_is_better: bool = True
    default_max_length: int = 128
    label_keys: tuple[str, ...] = ("labels",)
    text_format: str = "text"  # what a .txt file holds for this task (token classification: conll)
    # The teacher sees the same inputs for a training example in every epoch (the collator adds no
    # randomness), so its outputs can be cached (lmdistill.cache). Masked LM re-masks: False.
    static_train_inputs: bool = True

    def __init__(self, cfg: TaskConfig, search_dirs: list[Path] | None = None):
        self.cfg = cfg
        self.splits: dict[str, Split] = {}  # the rows in use, with the file place of each
        self.data_notes: list[str] = []  # every "N rows skipped: ..." line logged while loading
        for split, source, key, limit in (("train", cfg.train, "task.train", cfg.max_train_samples),
                                          ("eval", cfg.eval, "task.eval", cfg.max_eval_samples)):
            loaded = load_rows(source, key, cfg.format, search_dirs, cfg.hub_subset, self.text_format)
            self.data_notes += loaded.notes
            self.check_columns(loaded)
            skips = Skips()
            loaded = self.clean(split, loaded, skips)
            notes = skips.log()
            self.data_notes += notes
            if len(loaded.data) == 0:
                raise DataError(f"{key}: {source} has no usable rows ({'; '.join(notes)})")
            if limit is not None and limit < len(loaded.data):  # the first N usable rows
                loaded = loaded.select(list(range(limit)))
            self.splits[split] = loaded
        self.raw_train = self.splits["train"].data
        self.raw_eval = self.splits["eval"].data
        self._tokenized: dict[tuple, datasets.Dataset] = {}
        self.model_config = None  # the teacher's config, bound by the pipeline before any model is built
        self.setup()

    def bind(self, model_config) -> None:
        """Called once with the teacher's config, before auto_class(); e.g. LM picks masked vs causal."""
        self.model_config = model_config

    # ---- subclass hooks -------------------------------------------------------------------
    def check_columns(self, split: Split) -> None:
        """Raise DataError (naming the file and the config key) if a column the task reads is missing."""

    def clean(self, name: str, split: Split, skips: Skips) -> Split:
        """Check every row of a whole split (`name` is "train" or "eval") before any is used: a value of
        the wrong kind is a DataError naming its line; an unusable row is left out with `skips.add`."""
        return split

    def setup(self) -> None:
        """After cleaning and max_*_samples: fix what the rows in use imply (e.g. the label set)."""

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

    def bind_tokenizer(self, tokenizer) -> None:
        """Called once with the teacher's tokenizer, before anything is written: a task that depends on
        the tokenizer (prompt verbalizers) checks it here."""

    def mark_finetuned(self, model) -> None:
        """Called on the teacher after its fine-tuning, before it is cached, so `head_is_trained` can
        recognise it (a task whose head is the LM head has no other sign of it)."""

    # A task whose batches are not plain model inputs (prompt classification: an answer position, class
    # labels) provides the forward pass: (net, batch, needs) -> Features. The pipeline makes it the
    # default student_forward / teacher_forward of every stage; None: one plain forward.
    model_forward = None

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
        device = model_device(model)  # the batches go where the model is (GPU, CPU, or onnxruntime's CPU)
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
                while len(ids) < length and j < i + 1 + len(dataset) * length:
                    ids += list(dataset[j % len(dataset)]["input_ids"])[1:]
                    j += 1
                if len(ids) < length:  # every row is a single token: nothing to continue with but it
                    ids += ids[-1:] * (length - len(ids))
                ids = ids[:length]
            rows.append(ids)
        input_ids = torch.tensor(rows, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


class LabeledTask(Task):
    """A task with a closed label set learned from train (classification, token classification)."""

    labels: list[str]
    label2id: dict[str, int]

    label_places: dict[str, dict[str, str]]  # split -> label -> where it first appears

    def note_labels(self, name: str, found: dict[str, str], column: str, noun: str = "label") -> None:
        """Record where each label of a split first appears (`found`: label -> place) and check that a
        column does not write one class two ways: `1` and `1.0` (or ` pos` and `pos`) are an error, and
        so is a column that mixes number labels and word labels (two label encodings joined, or a
        stray header). Labels are otherwise compared as text, exactly as written."""
        if not hasattr(self, "label_places"):
            self.label_places = {}
        self.label_places[name] = found
        check_label_spellings(found, {}, column, noun)

    def set_label_set(self, train_labels: list[str], eval_labels: set[str], column: str, noun: str = "label"):
        """Fix the label set (train_labels, already sorted); eval may not hold a label train never had."""
        unseen = sorted(set(eval_labels) - set(train_labels))
        if unseen:
            places = getattr(self, "label_places", {})
            train_places = {k: v for k, v in places.get("train", {}).items() if k in set(train_labels)}
            eval_places = places.get("eval", {})
            check_label_spellings({k: eval_places.get(k, self.cfg.eval) for k in unseen}, train_places, column,
                                  noun, "in train")
            where = eval_places.get(unseen[0], self.cfg.eval)
            raise DataError(
                f"{where}: {noun} '{unseen[0]}' in column '{column}' never appears in train "
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


NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def label_text(value, column: str, place: str) -> str | None:
    """A label cell as text (JSON 1 and "1" are the same label); None when there is none."""
    if value is None:
        return None
    if isinstance(value, (list, dict)):
        raise DataError(f"{place}: column '{column}' holds a {'list' if isinstance(value, list) else 'JSON object'}, "
                        "not a label")
    return value if isinstance(value, str) else str(value)


def check_label_spellings(found: dict[str, str], others: dict[str, str], column: str, noun: str = "label",
                          others_name: str = "") -> None:
    """DataError if two labels are one class written two ways (`1` / `1.0` / ` 1`, `pos` / `pos `), or
    if number labels and word labels are mixed. `found` and `others` map label -> where it first is."""
    def key(label: str):
        text = label.strip()
        return ("number", float(text)) if NUMBER.fullmatch(text) else ("word", text)

    seen = {key(label): (label, place) for label, place in others.items()}
    for label, place in found.items():
        first = seen.setdefault(key(label), (label, place))
        if first[0] != label:
            there = f" {others_name}" if others_name and first[0] in others else ""
            raise DataError(
                f"{place}: {noun} {label!r} in column '{column}' is {noun} {first[0]!r}{there} ({first[1]}) written "
                f"another way; write each class one way"
            )
    numbers = [(label, place) for label, place in {**others, **found}.items() if key(label)[0] == "number"]
    words = [(label, place) for label, place in {**others, **found}.items() if key(label)[0] == "word"]
    if numbers and words:
        few, many = (numbers, words) if len(numbers) < len(words) else (words, numbers)
        kind = "a number" if few is numbers else "a word"
        raise DataError(
            f"{few[0][1]}: {noun} {few[0][0]!r} in column '{column}' is {kind}, but the column also holds "
            f"{'numbers' if many is numbers else 'words'} such as {many[0][0]!r} ({many[0][1]}); mixed label "
            "encodings (or a stray header line?)"
        )


def masked_rows(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor):
    """Select rows [N, C] of [B, L, C] logits where mask [B, L] is true."""
    keep = mask.bool()
    return student[keep], teacher[keep]


def perplexity(nll_sum: float, count: int) -> float:
    return math.exp(nll_sum / max(count, 1)) if count else float("inf")
