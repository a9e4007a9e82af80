"""Load local data files (or hub datasets) into `datasets.Dataset` objects.

Formats: tsv, csv, jsonl/json, CoNLL/IOB2 (`token tag` per line, blank line between sentences),
SQuAD json (flattened to one row per question), and plain text (one row per line).
A hub dataset is written `hub:NAME@SPLIT` (or a bare name that is not a path); offline it fails
with a one-line DataError.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import datasets

from lmdistill.errors import DataError
from lmdistill.tasks.brat import read_brat

FILE_SUFFIXES = {
    ".tsv": "tsv",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "json",
    ".txt": "text",
    ".raw": "text",
    ".conll": "conll",
    ".iob2": "conll",
    ".bio": "conll",
}


def resolve_path(path: str, search_dirs: list[Path] | None = None) -> Path | None:
    """Find a relative path in the current folder, then in `search_dirs` (the config's folder)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate if candidate.exists() else None
    for base in [Path.cwd(), *(search_dirs or [])]:
        if (base / candidate).exists():
            return (base / candidate).resolve()
    return None


def load_hub(source: str, key: str, subset: str | None, default_split: str) -> datasets.Dataset:
    name = source.removeprefix("hub:")
    name, _, split = name.partition("@")
    split = split or default_split
    try:
        return datasets.load_dataset(name, subset, split=split)
    except Exception as err:  # the hub client raises many types; all mean "not available here"
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        why = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else type(err).__name__
        raise DataError(
            f"{key}: cannot load hub dataset '{name}' split '{split}' ({why}); use a local file instead"
        ) from None


def detect_format(path: Path, fmt: str, text_format: str = "text") -> str:
    """The file format: as configured, or from the suffix. `.txt`/`.raw` mean `text_format`, which
    token classification sets to `conll` (CoNLL files are often named .txt)."""
    if fmt != "auto":
        return fmt
    suffix = FILE_SUFFIXES.get(path.suffix.lower())
    if suffix == "text":
        return text_format
    if suffix == "json":
        head = path.open(encoding="utf-8").read(4096).lstrip()
        return "squad" if head.startswith("{") and '"data"' in head and '"paragraphs"' in head else "jsonl"
    if suffix is None:
        raise DataError(f"{path}: cannot tell the format from the suffix; set task.format")
    return suffix


def read_tsv(path: Path, delimiter: str = "\t") -> datasets.Dataset:
    with path.open(encoding="utf-8", newline="") as handle:
        # QUOTE_NONE: SST-2 and TREC hold bare quote characters that csv quoting would swallow.
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        rows = [row for row in reader if row]
    if not rows:
        raise DataError(f"{path}: the file is empty")
    header, body = rows[0], rows[1:]
    for line_no, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}:{line_no}: expected {len(header)} columns ({', '.join(header)}), got {len(row)}")
    return datasets.Dataset.from_dict({name: [row[i] for row in body] for i, name in enumerate(header)})


def read_conll(path: Path) -> datasets.Dataset:
    """`token ... tag` per line (tag last), sentences separated by blank lines; -DOCSTART- skipped."""
    sentences, tags, tokens_now, tags_now = [], [], [], []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                if tokens_now:
                    sentences.append(tokens_now)
                    tags.append(tags_now)
                    tokens_now, tags_now = [], []
                continue
            parts = line.split()
            if parts[0] == "-DOCSTART-":
                continue
            if len(parts) < 2:
                raise DataError(f"{path}:{line_no}: expected 'token tag', got {line!r}")
            tokens_now.append(parts[0])
            tags_now.append(parts[-1])
    if tokens_now:
        sentences.append(tokens_now)
        tags.append(tags_now)
    return datasets.Dataset.from_dict({"tokens": sentences, "tags": tags})


def read_squad(path: Path) -> datasets.Dataset:
    """SQuAD v1.1 json -> rows of id, title, context, question, answers{text, answer_start}."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (line {err.lineno})") from None
    rows = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for article in payload.get("data", []):
        for paragraph in article.get("paragraphs", []):
            for qa in paragraph.get("qas", []):
                rows["id"].append(str(qa["id"]))
                rows["title"].append(article.get("title", ""))
                rows["context"].append(paragraph["context"])
                rows["question"].append(qa["question"])
                rows["answers"].append(
                    {
                        "text": [a["text"] for a in qa.get("answers", [])],
                        "answer_start": [int(a["answer_start"]) for a in qa.get("answers", [])],
                    }
                )
    return datasets.Dataset.from_dict(rows)


def read_text(path: Path) -> datasets.Dataset:
    lines = [line.rstrip("\n") for line in path.open(encoding="utf-8")]
    return datasets.Dataset.from_dict({"text": [line for line in lines if line.strip()]})


def load_split(
    source: str,
    key: str,
    fmt: str = "auto",
    search_dirs: list[Path] | None = None,
    hub_subset: str | None = None,
    max_samples: int | None = None,
    text_format: str = "text",
) -> datasets.Dataset:
    """Load one split. `key` is the config key (`task.train`) that error messages name."""
    path = resolve_path(source, search_dirs)
    if path is None:
        # No such file: `hub:NAME@SPLIT`, or a bare name without a file suffix, is a hub dataset.
        if source.startswith("hub:") or (not Path(source).suffix and not source.startswith((".", "/", "~"))):
            data = load_hub(source, key, hub_subset, "train" if key.endswith("train") else "validation")
        else:
            raise DataError(f"{key}: file not found: {source}")
    else:
        if path.is_dir():
            if fmt in ("brat", "auto") and any(path.glob("*.ann")):
                fmt = "brat"
            else:
                raise DataError(f"{key}: {path} is a folder; give a file (or a folder of brat .txt/.ann files)")
        kind = detect_format(path, fmt, text_format)
        readers = {
            "tsv": read_tsv,
            "csv": lambda p: read_tsv(p, delimiter=","),
            "jsonl": lambda p: datasets.load_dataset("json", data_files=str(p), split="train"),
            "json": lambda p: datasets.load_dataset("json", data_files=str(p), split="train"),
            "conll": read_conll,
            "squad": read_squad,
            "text": read_text,
            "brat": read_brat,
        }
        try:
            data = readers[kind](path)
        except DataError:
            raise
        except Exception as err:  # a malformed file; say which
            raise DataError(f"{key}: cannot read {path} as {kind}: {str(err).splitlines()[0]}") from None
    if max_samples is not None and max_samples < len(data):
        data = data.select(range(max_samples))
    if len(data) == 0:
        raise DataError(f"{key}: {source} has no rows")
    return data
