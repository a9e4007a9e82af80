"""Read a folder of brat standoff documents (`NAME.txt` + `NAME.ann`) as whole-document NER rows.

One row per document: `tokens` (the text split on whitespace) and `tags` (IOB2). Entity lines
(`T1<TAB>TYPE START END<TAB>TEXT`) give character offsets into the `.txt`; other annotation lines
(relations, events, attributes, notes) are ignored. Nested mentions are flattened to the outermost
ones (a mention inside another is dropped), the rule LitBank's documentation recommends for flat
NER; of two mentions with the same extent the first in the file is kept, and a mention that
crosses a kept one without nesting is dropped (counted in the log). A token belongs to a mention
when it overlaps the mention's characters.

Bad files fail with one line naming the file and line: an entity span outside the text, an end
before its start, a discontinuous span, or a mention text that differs from the text at its offsets.
Both files are read as every data file is (`io.read_text_file`: UTF-8, a byte-order mark dropped),
with no newline translation, so character offsets count a CRLF line end as two characters, as brat does.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import datasets

from lmdistill.errors import DataError
from lmdistill.tasks.io import LINE_END, Split, read_text_file

logger = logging.getLogger("lmdistill")
ENTITY = re.compile(r"^(T\d+)\t(\S+) (\d+(?: \d+)*(?:;\d+ \d+)*)\t?(.*)$")


def read_ann(path: Path, text: str) -> list[tuple[int, int, str]]:
    """(start, end, type) of every entity mention, in file order, checked against `text`."""
    mentions = []
    for line_no, line in enumerate(LINE_END.split(read_text_file(path)), start=1):
        if not line.startswith("T"):
            continue
        match = ENTITY.match(line)
        if match is None:
            raise DataError(f"{path}:{line_no}: expected 'T<n><TAB>TYPE START END<TAB>TEXT', got {line[:80]!r}")
        name, kind, offsets, mention = match.groups()
        if ";" in offsets:
            raise DataError(f"{path}:{line_no}: entity {name} has a discontinuous span ({offsets}); not supported")
        start, end = (int(x) for x in offsets.split())
        if end > len(text) or start >= len(text):
            raise DataError(f"{path}:{line_no}: entity {name} span {start}-{end} is outside the text "
                            f"({len(text)} characters in {path.with_suffix('.txt').name})")
        if end <= start:
            raise DataError(f"{path}:{line_no}: entity {name} ends ({end}) before it starts ({start})")
        if mention and text[start:end] != mention:
            raise DataError(f"{path}:{line_no}: entity {name} text {mention[:40]!r} differs from the text at "
                            f"{start}-{end} ({text[start:end][:40]!r})")
        mentions.append((start, end, kind))
    return mentions


def outermost(mentions: list[tuple[int, int, str]]) -> tuple[list[tuple[int, int, str]], int]:
    """The mentions contained in no other mention (first of equal extents kept); crossing ones dropped.
    Returns (kept, number dropped for crossing)."""
    order = sorted(range(len(mentions)), key=lambda i: (mentions[i][0], -mentions[i][1], i))
    kept, crossing = [], 0
    for i in order:
        start, end, _ = mentions[i]
        inside = any(ks <= start and end <= ke for ks, ke, _ in kept)
        if inside:
            continue
        if any(ks < end and start < ke for ks, ke, _ in kept):
            crossing += 1
            continue
        kept.append(mentions[i])
    return sorted(kept), crossing


def document_row(text: str, mentions: list[tuple[int, int, str]]) -> tuple[list[str], list[str], int]:
    """Whitespace tokens of `text` and their IOB2 tags from the outermost mentions."""
    tokens = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", text)]
    tags = ["O"] * len(tokens)
    kept, crossing = outermost(mentions)
    for start, end, kind in kept:
        covered = [k for k, (ts, te, _) in enumerate(tokens) if ts < end and start < te]
        for position, k in enumerate(covered):
            tags[k] = ("B-" if position == 0 else "I-") + kind
    return [t for _, _, t in tokens], tags, crossing


def read_brat(folder: Path) -> Split:
    """All `*.ann` files of `folder` (sorted by name) with their `.txt`: columns id, tokens, tags; each
    row's place is its `.ann` file name."""
    anns = sorted(folder.glob("*.ann"))
    if not anns:
        raise DataError(f"{folder}: no brat .ann files in this folder")
    rows = {"id": [], "tokens": [], "tags": []}
    crossing = 0
    for ann in anns:
        txt = ann.with_suffix(".txt")
        if not txt.is_file():
            raise DataError(f"{ann}: no text file {txt.name} beside it")
        text = read_text_file(txt)
        tokens, tags, dropped = document_row(text, read_ann(ann, text))
        crossing += dropped
        rows["id"].append(ann.stem)
        rows["tokens"].append(tokens)
        rows["tags"].append(tags)
    if crossing:
        logger.warning("%s: %d mentions cross another mention without nesting and were dropped", folder, crossing)
    return Split(datasets.Dataset.from_dict(rows), str(folder), [ann.name for ann in anns], "brat")
