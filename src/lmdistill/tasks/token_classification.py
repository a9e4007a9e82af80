"""Token classification (NER, chunking, POS) on words tagged one tag each.

Data: CoNLL/IOB2 files (`token tag` per line, blank line between sentences; columns `tokens`, `tags`)
or jsonl rows with a list-of-words column (`task.text`, default `tokens`) and a list-of-tags column
(`task.label`, default `tags`). Tags are strings such as `B-PER`; the label set is the sorted set of
train tags, and a tag that appears only in eval is an error. An I-X that begins an entity (IOB1,
or a broken IOB2 file) is read as B-X, as conlleval reads it, and counted (`repair_iob`).

Words are tokenized with `is_split_into_words=True`; each word's label sits on its FIRST subword,
the other subwords and the special tokens get -100 (ignored by the loss and the metrics).

Long documents are never truncated. A document longer than the model's window (`task.max_length`,
capped at the model's positions) is cut into overlapping windows, `task.doc_stride` tokens of
overlap (default 128), each wrapped in the tokenizer's special tokens. Training uses every window.
At evaluation each word takes the prediction of the window in which its first subword is farthest
from a window edge (the centre of a window wins; a document's own first and last tokens count as
far from the edge), and the whole document is scored against all its gold tags, so an entity past
any cut is still scored. A word the tokenizer turns into no subword at all is predicted `O`.

Metrics: entity-level precision, recall and F1 (seqeval, conlleval-style, the primary metric is
`f1`), and token accuracy over all words, all in 0..1.
"""

from __future__ import annotations

import warnings

import datasets
import torch
from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

from lmdistill.errors import DataError
from lmdistill.tasks.base import LabeledTask, logger, masked_rows
from lmdistill.tasks.io import Skips, Split
from lmdistill.tasks.windows import document_windows, merge_word_predictions

IGNORE = -100
SCHEME_PREFIXES = ("B-", "I-", "E-", "S-", "L-", "U-")


def align_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Per-token labels: the word's label on its first subword, -100 elsewhere (specials, later subwords)."""
    labels, previous = [], None
    for word in word_ids:
        if word is None or word == previous:
            labels.append(IGNORE)
        else:
            labels.append(word_labels[word])
        previous = word
    return labels


def repair_iob(tags: list[str]) -> list[int]:
    """Rewrite, in place, every I-X that begins an entity (after O, at the start, or after a tag of
    another type) as B-X; returns the positions changed. This is how conlleval (and seqeval's default
    mode) reads such a tag, so entity spans do not change; it also turns IOB1 into IOB2."""
    changed, previous = [], "O"
    for k, tag in enumerate(tags):
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            tags[k] = "B-" + tag[2:]
            changed.append(k)
        previous = tags[k]
    return changed


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Entity-level precision/recall/F1 (seqeval default mode, as conlleval) and token accuracy."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns when no entity is predicted; the score is 0 then
        scores = {
            "f1": f1_score(gold, pred, zero_division=0),
            "precision": precision_score(gold, pred, zero_division=0),
            "recall": recall_score(gold, pred, zero_division=0),
        }
    total = sum(len(g) for g in gold)
    correct = sum(int(a == b) for g, p in zip(gold, pred) for a, b in zip(g, p))
    scores["accuracy"] = correct / total if total else 0.0
    return {k: float(v) for k, v in scores.items()}


class TokenClassificationTask(LabeledTask):
    kind = "token-classification"
    text_format = "conll"
    primary_metric = "f1"

    def check_columns(self, split: Split) -> None:
        text = self.single_text_column("tokens", "token classification reads one column of words")
        self.text_column, self.label_column = text, self.cfg.label or "tags"
        for column, key in ((self.text_column, "task.text"), (self.label_column, "task.label")):
            if column not in split.data.column_names:
                hint = "set task.format: conll" if split.data.column_names == ["text"] else f"set {key}"
                raise DataError(
                    f"{split.source}: no column '{column}' (columns: {', '.join(split.data.column_names)}); {hint}"
                )

    def clean(self, name, split, skips):
        """Rows: a list of words and a list of as many tags. No words, an empty word (it has no subwords,
        so its tag would silently vanish) or a missing tag: the row is skipped with a count. Anything
        else malformed is an error naming the line. IOB tags: an I-X that begins an entity (after O or
        after another type) is read as B-X, as conlleval reads it, and counted."""
        words_column, tags_column = self.text_column, self.label_column
        all_words, all_tags = list(split.data[words_column]), list(split.data[tags_column])
        keep, texts, found = [], [], {}
        for i, (words, tags) in enumerate(zip(all_words, all_tags)):
            place = split.at(i)
            if words is None or tags is None:
                skips.add(f"no '{words_column if words is None else tags_column}'", place)
                continue
            if not isinstance(words, (list, tuple)) or not isinstance(tags, (list, tuple)):
                raise DataError(f"{place}: columns '{words_column}' and '{tags_column}' must hold lists "
                                "(words and their tags)")
            if len(words) != len(tags):
                raise DataError(f"{place}: {len(words)} words in '{words_column}' but {len(tags)} tags in "
                                f"'{tags_column}'")
            bad = next((w for w in [*words, *tags] if isinstance(w, (list, dict))), None)
            if bad is not None:
                raise DataError(f"{place}: a word or tag is a {type(bad).__name__}, not text")
            if not words:
                reason = "no words"
            elif any(w is None or not str(w).strip() for w in words):
                reason = "an empty word (it has no subwords, so its tag would be lost)"
            elif any(t is None or not str(t).strip() for t in tags):
                reason = "a word without a tag"
            else:
                reason = None
            if reason:
                skips.add(reason, place)
                continue
            keep.append(i)
            texts.append([str(t) for t in tags])
        repaired = Skips("tag", "repaired")
        if all(t == "O" or t.startswith(("B-", "I-")) for tags in texts for t in tags):  # IOB1 or IOB2
            for row, tags in zip(keep, texts):
                for k in repair_iob(tags):
                    repaired.add("an I- tag that begins an entity (after O or another type) read as B-, "
                                 "as conlleval reads it", split.at(row, k))
        for row, tags in zip(keep, texts):
            for k, tag in enumerate(tags):
                if tag not in found:
                    found[tag] = split.at(row, k)
        self.note_labels(name, found, tags_column, noun="tag")
        if repaired:
            self.data_notes += repaired.log()
            return split.replace({tags_column: texts}, keep)
        return split.select(keep)

    def setup(self) -> None:
        train_tags = sorted({str(t) for tags in self.raw_train[self.label_column] for t in tags})
        eval_tags = {str(t) for tags in self.raw_eval[self.label_column] for t in tags}
        self.set_label_set(train_tags, eval_tags, self.label_column, noun="tag")
        odd = [t for t in train_tags if t != "O" and not t.startswith(SCHEME_PREFIXES)]
        if odd:
            logger.warning(
                "%s: tags such as '%s' are not IOB2/IOBES (B-X, I-X, O); entity-level F1 will be meaningless",
                self.cfg.train, odd[0],
            )

    def auto_class(self):
        return AutoModelForTokenClassification

    def stride(self, max_length: int) -> int:
        stride = self.cfg.doc_stride
        if stride >= max_length // 2:
            stride = max(max_length // 4, 0)
        return stride

    def tokenize(self, split, raw, tokenizer, max_length):
        words = [[str(w) for w in row] for row in raw[self.text_column]]
        tags = [[self.label2id[str(t)] for t in row] for row in raw[self.label_column]]
        windows = document_windows(words, tokenizer, max_length, self.stride(max_length))
        long_docs = len({w.doc for w in windows if w.count > 1})
        if long_docs:
            logger.info("%s: %d of %d documents are longer than %d tokens and were cut into overlapping windows",
                        split, long_docs, len(words), max_length)
        columns = {"input_ids": [w.input_ids for w in windows], "attention_mask": [[1] * len(w.input_ids)
                                                                                    for w in windows]}
        if "token_type_ids" in tokenizer.model_input_names:
            columns["token_type_ids"] = [[0] * len(w.input_ids) for w in windows]
        columns["labels"] = [[tags[w.doc][i] if i >= 0 else IGNORE for i in w.first_word] for w in windows]
        if split != "train":
            columns["_doc"] = [w.doc for w in windows]
            columns["_word"] = [w.first_word for w in windows]
            columns["_score"] = [w.centre_score for w in windows]
        return datasets.Dataset.from_dict(columns)

    def distillation_teacher(self, teacher, tokenizer, student_config):
        """A teacher with fewer positions than the student's windows reads them in windows (merged per token)."""
        from lmdistill.models.windowed import WindowedTeacher

        window = self.max_length(tokenizer, teacher.config)
        if self.max_length(tokenizer, student_config) <= window:
            return teacher
        return WindowedTeacher(teacher, window, self.stride(window))

    def collator(self, tokenizer):
        return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE, return_tensors="pt")

    def eval_step(self, model, batch):
        """Per window, the predicted label ids of its real tokens, in order (padding dropped, either side)."""
        inputs = {k: v for k, v in batch.items() if k not in self.label_keys}
        pred = model(**inputs).logits.argmax(-1).cpu().numpy()
        mask = batch["attention_mask"].bool().cpu().numpy()
        return [p[m] for p, m in zip(pred, mask)]

    def compute_metrics(self, outputs, dataset, split_raw) -> dict:
        """Whole documents (an eval split with its raw rows); without them (e.g. training windows scored
        for a length search) each window on its own labelled positions (first subwords)."""
        windows = [p for batch in outputs for p in batch]
        if split_raw is None or "_doc" not in dataset.column_names:
            gold = [[g for g in labels if g != IGNORE] for labels in dataset["labels"]]
            pred = [[p for p, g in zip(window, labels) if g != IGNORE] for window, labels in zip(windows, dataset["labels"])]
            return entity_scores([[self.labels[i] for i in row] for row in gold],
                                 [[self.labels[i] for i in row] for row in pred])
        gold_docs = [[str(t) for t in row] for row in split_raw[self.label_column]]
        merged = merge_word_predictions(windows, list(dataset["_doc"]), list(dataset["_word"]),
                                        list(dataset["_score"]), [len(doc) for doc in gold_docs])
        pred_docs = [[self.labels[i] if i >= 0 else "O" for i in doc] for doc in merged]
        return entity_scores(gold_docs, pred_docs)

    def logit_pairs(self, student_logits, teacher_logits, batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [masked_rows(student_logits, teacher_logits, batch.mask)]


__all__ = ["TokenClassificationTask", "align_labels", "entity_scores", "repair_iob"]
