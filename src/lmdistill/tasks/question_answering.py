"""Extractive question answering, SQuAD v1.1 style.

Data: SQuAD v1.1 json (rows of id, title, context, question, answers{text, answer_start}).
A question and its context are tokenized as a pair (`truncation="only_second"`); a context longer
than `task.max_length` (default 384) is cut into overlapping windows, `task.doc_stride` (default
128) tokens apart. Training windows carry the answer's start/end token positions, or the CLS
index 0 when the answer is not inside the window. Eval windows keep their example id
(`_example_id`) and the character offsets of their context tokens (`_offset_mapping`, [-1, -1]
for question, special and padding tokens); `Task.predict` drops these `_` columns before collation.

A student with more positions than its teacher (efficient attention, `task.max_length` up to
4,096) reads a long context in fewer, longer windows; during distillation the teacher reads each of
them in its own 512-token windows, the question repeated in each (`distillation_teacher`).

Metrics: the standard SQuAD post-processing (the 20 best start and 20 best end positions of every
window, spans of at most `task.max_answer_tokens` tokens (default 30), the best-scoring span over
all windows of an example), then the official SQuAD v1.1 exact match and F1 (answers normalised: lowercase, no punctuation, no articles
a/an/the, single spaces; the maximum over the gold answers). Both are percentages, 0..100, as in the
official evaluation script; the primary metric is `f1`.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import datasets
import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding

from lmdistill.errors import DataError
from lmdistill.tasks.base import Task, logger
from lmdistill.tasks.io import Skips, Split
from lmdistill.tasks.json_io import whole_number

N_BEST = 20
MAX_ANSWER_TOKENS = 30
PAD_LOGIT = -1.0e4  # padded positions in logit KD: exp() is 0, and no inf or nan appears
RULED_OUT = -1.0e5  # a student logit at or below this marks a position the model excludes by construction
COLUMNS = ("id", "context", "question", "answers")


# ---- official SQuAD v1.1 evaluation ----------------------------------------------------------
def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace (official v1.1)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """{"exact_match", "f1"} in 0..100 over the questions of `references`; max over gold answers."""
    if not references:
        return {"exact_match": 0.0, "f1": 0.0}
    em = f1 = 0.0
    for qid, golds in references.items():
        prediction = predictions.get(qid, "")
        golds = list(golds) or [""]
        em += max(exact_match_score(prediction, g) for g in golds)
        f1 += max(f1_score(prediction, g) for g in golds)
    return {"exact_match": 100.0 * em / len(references), "f1": 100.0 * f1 / len(references)}


# ---- post-processing -------------------------------------------------------------------------
def best_span(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: list,
    n_best: int = N_BEST,
    max_answer_tokens: int = MAX_ANSWER_TOKENS,
) -> tuple[float, int, int] | None:
    """The best (score, char_start, char_end) span of one window, or None if no valid span.

    Valid: start and end are context tokens (offsets not [-1, -1] and inside the window), end >= start,
    and the span is at most `max_answer_tokens` tokens. Score: start logit + end logit.
    """
    n = min(len(offsets), len(start_logits))
    starts = np.argsort(start_logits[:n])[::-1][:n_best]
    ends = np.argsort(end_logits[:n])[::-1][:n_best]
    best = None
    for s in starts:
        if offsets[s] is None or offsets[s][0] < 0:
            continue
        for e in ends:
            if offsets[e] is None or offsets[e][0] < 0 or e < s or e - s + 1 > max_answer_tokens:
                continue
            score = float(start_logits[s] + end_logits[e])
            if best is None or score > best[0]:
                best = (score, int(offsets[s][0]), int(offsets[e][1]))
    return best


def postprocess(
    start_logits: list[np.ndarray],
    end_logits: list[np.ndarray],
    feature_example_ids: list[str],
    feature_offsets: list[list],
    contexts: dict[str, str],
    n_best: int = N_BEST,
    max_answer_tokens: int = MAX_ANSWER_TOKENS,
) -> dict[str, str]:
    """Answer text per example id: the best span over all windows of the example ("" if none)."""
    best: dict[str, tuple[float, int, int]] = {}
    for start, end, qid, offsets in zip(start_logits, end_logits, feature_example_ids, feature_offsets):
        span = best_span(np.asarray(start), np.asarray(end), offsets, n_best, max_answer_tokens)
        if span is not None and (qid not in best or span[0] > best[qid][0]):
            best[qid] = span
    answers = {}
    for qid, context in contexts.items():
        answers[qid] = context[best[qid][1]:best[qid][2]] if qid in best else ""
    return answers


def anchor_answer(context: str, text: str, start: int) -> int | None:
    """Where `text` starts in `context`: `start` if it points at the text, else the occurrence of the
    text nearest to `start` (offsets counted in bytes or UTF-16 units, or shifted by an edit, land
    near the right place), else None."""
    if 0 <= start and context.startswith(text, start):
        return start
    hits, at = [], context.find(text)
    while at >= 0:
        hits.append(at)
        at = context.find(text, at + 1)
    return min(hits, key=lambda h: (abs(h - start), h)) if hits else None


class QuestionAnsweringTask(Task):
    kind = "question-answering"
    primary_metric = "f1"
    default_max_length = 384
    label_keys = ("start_positions", "end_positions")

    def check_columns(self, split: Split) -> None:
        missing = [c for c in COLUMNS if c not in split.data.column_names]
        if missing:
            raise DataError(
                f"{split.source}: no column '{missing[0]}' (columns: {', '.join(split.data.column_names)}); "
                "question answering reads SQuAD v1.1 json (id, context, question, answers)"
            )

    def clean(self, name, split, skips):
        """Per question: the id, context and question must be there (else an error naming the item); an
        empty context or question, or no usable answer, skips the question with a count. Train answers
        whose answer_start does not point at their text are re-anchored to the nearest occurrence of the
        text in the context (counted); an answer whose text is not in the context is dropped (counted).
        Eval answers are scored by their text only (the official SQuAD script), so their offsets are not
        checked; an eval id that appears twice is an error, or a skip if it is the same question."""
        rows = split.data
        ids, contexts, questions = list(rows["id"]), list(rows["context"]), list(rows["question"])
        all_answers = list(rows["answers"])
        keep, answers_out, seen = [], [], {}
        moved, dropped = Skips("answer", "re-anchored"), Skips("answer", "dropped")
        for i, (qid, context, question, answers) in enumerate(zip(ids, contexts, questions, all_answers)):
            place = split.at(i)
            for column, value in (("id", qid), ("context", context), ("question", question)):
                if value is None or isinstance(value, (list, dict)):
                    raise DataError(f"{place}: no '{column}'" if value is None else
                                    f"{place}: '{column}' holds a {type(value).__name__}, not text")
            qid = str(qid)
            texts, starts = self._answers(answers, place)
            if not str(context).strip() or not str(question).strip():
                skips.add(f"empty {'context' if not str(context).strip() else 'question'}", place)
                continue
            if name == "eval":
                if qid in seen:
                    first = seen[qid]
                    if (contexts[first], questions[first]) != (context, question):
                        raise DataError(f"{place}: question id {qid!r} is also the id of another question "
                                        f"({split.at(first)}); eval ids must be unique")
                    skips.add("a repeat of an earlier question (same id, question and context)", place)
                    continue
                seen[qid] = i
                kept = [(t, s) for t, s in zip(texts, starts) if t.strip()]
            else:
                kept = []
                for text, start in zip(texts, starts):
                    found = anchor_answer(str(context), text, start) if text.strip() else None
                    if found is None:
                        dropped.add("the answer text is not in the context" if text.strip() else
                                    "an empty answer text", place)
                    else:
                        if found != start:
                            moved.add("answer_start does not point at the answer text; used the nearest "
                                      "occurrence of the text in the context", place)
                        kept.append((text, found))
            if not kept:
                skips.add("no answer (SQuAD v2 unanswerable questions are not supported)" if not texts else
                          "no answer left (see the dropped answers)", place)
                continue
            keep.append(i)
            answers_out.append({"text": [t for t, _ in kept], "answer_start": [s for _, s in kept]})
        self.data_notes += moved.log() + dropped.log()
        if answers_out == [all_answers[i] for i in keep]:
            return split.select(keep)
        return split.replace({"answers": answers_out}, keep)

    @staticmethod
    def _answers(answers, place: str) -> tuple[list[str], list[int]]:
        """(texts, starts) of an answers cell: {"text": [...], "answer_start": [...]}; None is no answer."""
        if answers is None:
            return [], []
        if not isinstance(answers, dict) or not isinstance(answers.get("text"), list):
            raise DataError(f"{place}: 'answers' must be {{\"text\": [...], \"answer_start\": [...]}}")
        texts = ["" if t is None or isinstance(t, (list, dict)) else str(t) for t in answers["text"]]
        starts = answers.get("answer_start")
        starts = [whole_number(s) for s in starts] if isinstance(starts, list) else []
        if len(starts) != len(texts):
            starts = (starts + [-1] * len(texts))[:len(texts)]  # a missing answer_start: found by its text
        return texts, starts

    def auto_class(self):
        return AutoModelForQuestionAnswering

    def stride(self, max_length: int) -> int:
        stride = self.cfg.doc_stride
        if stride >= max_length // 2:
            smaller = max(max_length // 4, 1)
            logger.warning("task.doc_stride %d is too long for windows of %d tokens; using %d",
                           stride, max_length, smaller)
            stride = smaller
        return stride

    def _encode(self, raw, tokenizer, max_length: int):
        pad_on_right = tokenizer.padding_side == "right"
        questions = [q.lstrip() for q in raw["question"]]
        contexts = list(raw["context"])
        first, second = (questions, contexts) if pad_on_right else (contexts, questions)
        try:
            encoded = tokenizer(
                first, second,
                truncation="only_second" if pad_on_right else "only_first",
                max_length=max_length,
                stride=self.stride(max_length),
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
        except Exception as err:  # the tokenizer refuses when a question leaves too little room for context
            raise DataError(
                f"question answering: cannot cut contexts into windows of {max_length} tokens "
                f"({str(err).splitlines()[0]}); raise task.max_length or lower task.doc_stride"
            ) from None
        return encoded, 1 if pad_on_right else 0

    def tokenize(self, split, raw, tokenizer, max_length):
        encoded, context_index = self._encode(raw, tokenizer, max_length)
        sample_map = encoded.pop("overflow_to_sample_mapping")
        offsets_all = encoded.pop("offset_mapping")
        columns = {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        windows_per_example = Counter(sample_map)
        over = sum(1 for n in windows_per_example.values() if n > 1)
        if over:
            logger.info("%s: %d of %d contexts are longer than %d tokens and were cut into overlapping windows",
                        split, over, len(raw), max_length)
        if split == "train":
            starts, ends = [], []
            all_answers = list(raw["answers"])
            for i, offsets in enumerate(offsets_all):
                sequence_ids = encoded.sequence_ids(i)
                answers = all_answers[sample_map[i]]
                start_char = answers["answer_start"][0]
                end_char = start_char + len(answers["text"][0])
                context = [j for j, s in enumerate(sequence_ids) if s == context_index]
                if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
                    starts.append(0)  # the answer is not (wholly) in this window: point at CLS
                    ends.append(0)
                    continue
                first_tok, last_tok = context[0], context[-1]
                s = first_tok
                while s <= last_tok and offsets[s][0] <= start_char:
                    s += 1
                e = last_tok
                while e >= first_tok and offsets[e][1] >= end_char:
                    e -= 1
                starts.append(s - 1)
                ends.append(e + 1)
            columns["start_positions"] = starts
            columns["end_positions"] = ends
        else:
            ids = list(raw["id"])
            columns["_example_id"] = [ids[j] for j in sample_map]
            columns["_offset_mapping"] = [
                [list(o) if s == context_index else [-1, -1] for o, s in zip(offsets, encoded.sequence_ids(i))]
                for i, offsets in enumerate(offsets_all)
            ]
        return datasets.Dataset.from_dict(columns)

    def distillation_teacher(self, teacher, tokenizer, student_config):
        """A teacher with fewer positions than the student's windows reads each (question, context window)
        in its own windows, the question repeated in each; start/end logits merged per token."""
        from lmdistill.models.windowed import WindowedTeacher

        window = self.max_length(tokenizer, teacher.config)
        if self.max_length(tokenizer, student_config) <= window:
            return teacher
        return WindowedTeacher(teacher, window, self.stride(window), pair=True)

    def collator(self, tokenizer):
        return DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def eval_step(self, model, batch):
        """Per window, a numpy [n, 2] array of (start, end) logits over its n real (unpadded) tokens.

        Dropping the padding here keeps positions aligned with `_offset_mapping` whichever side pads.
        """
        inputs = {k: v for k, v in batch.items() if k not in self.label_keys}
        output = model(**inputs)
        logits = torch.stack([output.start_logits, output.end_logits], dim=-1).float().cpu().numpy()
        if "attention_mask" not in batch:
            return list(logits)
        mask = batch["attention_mask"].bool().cpu().numpy()
        return [row[keep] for row, keep in zip(logits, mask)]

    def compute_metrics(self, outputs, dataset, split_raw) -> dict:
        starts, ends = [], []
        for batch in outputs:
            for row in batch:
                starts.append(row[:, 0])
                ends.append(row[:, 1])
        ids = list(split_raw["id"])
        contexts = dict(zip(ids, split_raw["context"]))
        predictions = postprocess(starts, ends, list(dataset["_example_id"]), list(dataset["_offset_mapping"]),
                                  contexts, max_answer_tokens=self.cfg.max_answer_tokens)
        references = {qid: list(a["text"]) for qid, a in zip(ids, split_raw["answers"])}
        return squad_scores(predictions, references)

    def logit_pairs(self, student_logits, teacher_logits, batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Start and end pairs, [B, L] each, with padded positions at a large negative logit in both."""
        pad = ~batch.mask.bool()
        pairs = []
        for k in range(2):
            # Positions the student itself rules out are left out too (BigBird's QA model puts the
            # question tokens at -1e6): the teacher's small mass there would dominate the KL.
            out = pad | (student_logits[..., k].detach() <= RULED_OUT)
            s = student_logits[..., k].masked_fill(out, PAD_LOGIT)
            t = teacher_logits[..., k].masked_fill(out, PAD_LOGIT)
            pairs.append((s, t))
        return pairs
