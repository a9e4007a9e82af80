"""Windows over long documents, and merging predictions back (the centre of a window wins).

A document of N subword tokens is cut into windows of `max_length` tokens including the tokenizer's
special tokens, consecutive windows overlapping by `overlap` tokens. Each token of a window gets a
centre score: its distance to the nearer window edge, where a document's own start and end count as
infinitely far (no context is missing there). When several windows cover a token, the one with
the highest score wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FAR = 1_000_000  # the centre score of a token next to the document's own start or end


@dataclass
class Window:
    doc: int  # index of the document
    count: int  # how many windows the document has
    input_ids: list[int]  # with special tokens
    first_word: list[int]  # per token: the word index where this is the word's first subword, else -1
    centre_score: list[int]  # per token: distance to the nearer window edge (-1 on special tokens)


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after one sequence ([CLS] / [SEP] for BERT)."""
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    return [], []


def spans(length: int, body: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) token spans of the windows over `length` tokens: `body` tokens each, `overlap` shared."""
    if body <= overlap:
        raise ValueError(f"windows of {body} tokens cannot overlap by {overlap}")
    result, start = [], 0
    while True:
        end = min(start + body, length)
        result.append((start, end))
        if end >= length:
            return result
        start += body - overlap


def centre_scores(start: int, end: int, length: int) -> list[int]:
    """Distance of each token in [start, end) to the nearer window edge; document edges are far."""
    scores = []
    for position in range(start, end):
        left = position - start if start > 0 else FAR
        right = end - 1 - position if end < length else FAR
        scores.append(min(left, right))
    return scores


def document_windows(words: list[list[str]], tokenizer, max_length: int, overlap: int) -> list[Window]:
    """Cut every document (a list of words) into windows of at most `max_length` tokens."""
    prefix, suffix = special_tokens(tokenizer)
    body = max_length - len(prefix) - len(suffix)
    encoded = tokenizer(words, is_split_into_words=True, add_special_tokens=False, truncation=False, verbose=False)
    windows = []
    for doc in range(len(words)):
        ids = encoded["input_ids"][doc]
        word_ids = encoded.word_ids(doc)
        first = [w if w is not None and (k == 0 or word_ids[k - 1] != w) else -1 for k, w in enumerate(word_ids)]
        doc_spans = spans(len(ids), body, overlap) if ids else [(0, 0)]
        for start, end in doc_spans:
            specials = [-1] * len(prefix), [-1] * len(suffix)
            windows.append(Window(
                doc=doc, count=len(doc_spans),
                input_ids=prefix + ids[start:end] + suffix,
                first_word=specials[0] + first[start:end] + specials[1],
                centre_score=specials[0] + centre_scores(start, end, len(ids)) + specials[1],
            ))
    return windows


def merge_word_predictions(window_preds: list, docs: list[int], first_words: list[list[int]],
                           scores: list[list[int]], doc_lengths: list[int]) -> list[list[int]]:
    """Per document, one prediction per word: from the window where the word's first subword has the
    highest centre score. window_preds[i]: per-token predictions of window i (real tokens, in order).
    Words no window labels get -1."""
    merged = [np.full(n, -1, dtype=np.int64) for n in doc_lengths]
    best = [np.full(n, -1, dtype=np.int64) for n in doc_lengths]
    for pred, doc, word_row, score_row in zip(window_preds, docs, first_words, scores):
        for position, (word, score) in enumerate(zip(word_row, score_row)):
            if word >= 0 and score > best[doc][word]:
                best[doc][word] = score
                merged[doc][word] = int(pred[position])
    return [m.tolist() for m in merged]
