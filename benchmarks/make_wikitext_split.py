"""Split WikiText-2 raw test (data/wikitext2/wiki.test.raw) by article into train.txt and eval.txt.

An article starts at a heading line with exactly one '=' on each side (` = Title = `); section
headings (` = = Section = = `) do not start one. The first 90% of the articles (rounded down), with
the lines before the first heading, go to train.txt; the remaining articles to eval.txt. Lines are
copied byte for byte (CRLF line ends kept), so train.txt + eval.txt == wiki.test.raw. Deterministic.

Usage: python benchmarks/make_wikitext_split.py [--check]   (--check: verify, write nothing)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1] / "data" / "wikitext2"
TRAIN_FRACTION = 0.9
ARTICLE = re.compile(r"^ = [^=].* = $")  # exactly one '=' each side; ` = = Section = = ` does not match


def split(lines: list[str]) -> tuple[list[str], list[str], int, int]:
    starts = [i for i, line in enumerate(lines) if ARTICLE.match(line.rstrip("\r\n"))]
    n_train = int(len(starts) * TRAIN_FRACTION)
    cut = starts[n_train]
    return lines[:cut], lines[cut:], n_train, len(starts) - n_train


def counts(lines: list[str]) -> tuple[int, int]:
    return len(lines), sum(len(line.split()) for line in lines)


def main(argv: list[str]) -> int:
    raw = (FOLDER / "wiki.test.raw").read_bytes().decode("utf-8")  # no newline translation
    lines = raw.splitlines(keepends=True)
    train, evaluation, n_train, n_eval = split(lines)
    assert "".join(train) + "".join(evaluation) == raw
    texts = {"train.txt": "".join(train), "eval.txt": "".join(evaluation)}
    for name, part, articles in (("train.txt", train, n_train), ("eval.txt", evaluation, n_eval)):
        n_lines, n_words = counts(part)
        non_empty = sum(1 for line in part if line.strip())
        print(f"{name}: {articles} articles, {n_lines} lines ({non_empty} non-empty), {n_words} words, "
              f"{len(texts[name].encode('utf-8'))} bytes")
    if "--check" in argv:
        same = all((FOLDER / n).is_file() and (FOLDER / n).read_bytes() == t.encode("utf-8") for n, t in texts.items())
        print("files match" if same else "files differ")
        return 0 if same else 1
    for name, text in texts.items():
        (FOLDER / name).write_bytes(text.encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
