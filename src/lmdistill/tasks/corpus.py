"""Raw-text corpora for label-free stages (general distillation: GLMD, LAD, efficient students, TED-LM).

A recipe key such as `corpus: [data/books/*.txt]` names plain-text files or globs. Files are read as
paragraphs (blocks of non-blank lines; a hard-wrapped paragraph is joined with spaces, so a book's
line breaks do not become separator tokens), tokenized without special tokens, joined with EOS
(causal) or SEP (masked) and cut into blocks of exactly `block_size` tokens, as the
language-modelling task does (`language_modeling.text_blocks`).
"""

from __future__ import annotations

import glob
from pathlib import Path

import datasets

from lmdistill.errors import ConfigError, DataError
from lmdistill.tasks.io import read_text_file, split_lines


def resolve_corpus(patterns: str | list[str], key: str, search_dirs: list[Path] | None = None) -> list[Path]:
    """Files matched by `patterns` (paths or globs), looked up in the current folder, then in
    `search_dirs` (the config's folder and its parent). Sorted, without repeats; an entry matching
    no file is a ConfigError naming `key`."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not patterns:
        raise ConfigError(f"{key}: give at least one text file or glob")
    files: list[Path] = []
    for pattern in patterns:
        expanded = Path(pattern).expanduser()
        bases = [Path()] if expanded.is_absolute() else [Path.cwd(), *(search_dirs or [])]
        matches: list[Path] = []
        for base in bases:
            matches = sorted(Path(p) for p in glob.glob(str(base / expanded), recursive=True) if Path(p).is_file())
            if matches:
                break
        if not matches:
            raise ConfigError(f"{key}: '{pattern}' matches no file")
        files.extend(m.resolve() for m in matches)
    return list(dict.fromkeys(files))


def read_paragraphs(path: Path) -> list[str]:
    """The paragraphs of a text file: runs of non-blank lines joined with single spaces. The file is
    read as every data file is (`io.read_text_file`): invalid UTF-8, UTF-16 or a NUL byte is a
    DataError naming the line."""
    paragraphs, current = [], []
    for line in split_lines(read_text_file(path)):  # a BOM and CRLF are fine; bad bytes name the line
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def corpus_dataset(files: list[Path], tokenizer, block_size: int, causal: bool, max_tokens: int | None = None,
                   key: str = "recipe.corpus") -> datasets.Dataset:
    """Blocks of `block_size` tokens from `files`: columns input_ids, attention_mask (and labels =
    input_ids for causal LMs). `max_tokens` stops reading once that many tokens are collected (files
    are read in order), so a budget can be set on a large corpus."""
    from lmdistill.tasks.language_modeling import text_blocks

    paragraphs: list[str] = []
    tokens = 0
    for path in files:
        for paragraph in read_paragraphs(path):
            paragraphs.append(paragraph)
            tokens += max(1, len(paragraph) // 4)  # a cheap estimate; the exact count is made below
        if max_tokens is not None and tokens >= 1.3 * max_tokens:
            break
    if not paragraphs:
        raise DataError(f"{key}: the files hold no text ({', '.join(str(f) for f in files[:3])})")
    blocks = text_blocks(paragraphs, tokenizer, block_size, causal, str(files[0]), key)
    if max_tokens is not None:
        blocks = blocks[: max(1, max_tokens // block_size)]
    columns = {"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks]}
    if causal:
        columns["labels"] = [list(b) for b in blocks]
    return datasets.Dataset.from_dict(columns)
