"""Load local data files (or hub datasets) into `datasets.Dataset` objects.

Formats: tsv, csv, CoNLL/IOB2 (`token tag` per line, blank line between sentences) and plain
text (one row per line) here; jsonl/json and SQuAD json (flattened to one row per question) in
`json_io`; a folder of brat standoff documents (`.txt` + `.ann`, one row per document) in `brat`.
A hub dataset is written `hub:NAME@SPLIT` (or a bare name that is not a path); offline it fails
with a one-line DataError.

Every file is read the same way first (`read_text_file`): a UTF-8 byte-order mark is dropped and
CRLF / CR line ends count as line ends (both are encoding details: the rows do not change); a
UTF-16 file, a NUL byte or bytes that are not UTF-8 are a DataError naming the line. A file that
is structurally broken (a row with the wrong number of fields, a line that is not JSON, a CoNLL
line whose column count changes, an unclosed quote) is a DataError naming the file and line.
Rows that are structurally fine but unusable (no label, empty text, ...) are the task's business:
each task skips them with a count (see `Skips`) or rejects them, in its `clean()`.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from lmdistill.errors import DataError

logger = logging.getLogger("lmdistill")

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
LINE_END = re.compile(r"\r\n|\r|\n")  # what Python's universal newlines split on (not \x0b, \x85, \u2028, ...)
LINE_END_BYTES = re.compile(rb"\r\n|\r|\n")


@dataclass
class Split:
    """One loaded split: its rows, the file they came from, and where each row starts in that file.

    `where[i]` is row i's line number (int), or a JSON path such as `data[0].paragraphs[3].qas[2]`
    (str); None for hub data, whose rows are named by their index. In a CoNLL file a sentence's
    words sit on consecutive lines, so word k of row i is on line `where[i] + k` (`at(i, k)`).
    """

    data: datasets.Dataset
    source: str
    where: list[int | str] | None = None
    kind: str = ""
    notes: list[str] = field(default_factory=list)  # the skip lines the reader logged

    def at(self, row: int, word: int | None = None) -> str:
        if self.where is None:
            return f"{self.source}: row {row + 1}"
        place = self.where[row]
        if isinstance(place, str):
            return f"{self.source} ({place})"
        if word is not None and self.kind == "conll":
            place += word
        return f"{self.source}:{place}"

    def select(self, rows: list[int]) -> "Split":
        if len(rows) == len(self.data):
            return self
        where = None if self.where is None else [self.where[i] for i in rows]
        return Split(self.data.select(rows), self.source, where, self.kind, self.notes)

    def replace(self, columns: dict[str, list], rows: list[int]) -> "Split":
        """The kept `rows`, with some columns given new values (one per kept row); column order is kept."""
        if not columns:
            return self.select(rows)
        kept = self.data.select(rows) if len(rows) != len(self.data) else self.data
        table = {name: columns[name] if name in columns else list(kept[name]) for name in kept.column_names}
        where = None if self.where is None else [self.where[i] for i in rows]
        return Split(datasets.Dataset.from_dict(table), self.source, where, self.kind, self.notes)


class Skips:
    """Rows (or tags, answers) left out or repaired, counted by reason; `log()` writes one line per reason:
    `3 rows skipped: empty text in column 'sentence' (first at data/train.tsv:17)`."""

    def __init__(self, noun: str = "row", verb: str = "skipped"):
        self.noun, self.verb = noun, verb
        self.counts: dict[str, list] = {}  # reason -> [count, first place]

    def add(self, reason: str, where: str) -> None:
        entry = self.counts.setdefault(reason, [0, where])
        entry[0] += 1

    def __bool__(self) -> bool:
        return bool(self.counts)

    def lines(self) -> list[str]:
        return [
            f"{n} {self.noun}{'' if n == 1 else 's'} {self.verb}: {reason} (first at {first})"
            for reason, (n, first) in self.counts.items()
        ]

    def log(self) -> list[str]:
        lines = self.lines()
        for line in lines:
            logger.warning("%s", line)
        return lines


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


# ---- text ------------------------------------------------------------------------------------
def _line_of(raw: bytes, offset: int) -> int:
    return len(LINE_END_BYTES.findall(raw, 0, offset)) + 1


def read_text_file(path: Path) -> str:
    """The file as text: UTF-8, a leading byte-order mark dropped. UTF-16, NUL bytes and invalid
    UTF-8 are DataErrors naming the line (and byte offset)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err.strerror or err})") from None
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path}: the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    nul = raw.find(b"\0", skip)
    if nul >= 0:
        raise DataError(
            f"{path}:{_line_of(raw, nul)}: a NUL byte (byte offset {nul}): this is a binary file or UTF-16/32 "
            "text, not UTF-8 text"
        )
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = skip + err.start
        raise DataError(
            f"{path}:{_line_of(raw, offset)}: not valid UTF-8 (byte 0x{raw[offset]:02x} at byte offset {offset}); "
            "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def clip(text: str, limit: int = 60) -> str:
    """A cell or line for an error message: repr'd (one line, control characters visible), cut short."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def split_lines(text: str) -> list[str]:
    """Lines without their ends; a final line end does not start another (empty) line."""
    lines = LINE_END.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def detect_format(path: Path, fmt: str, text_format: str = "text", text: str | None = None) -> str:
    """The file format: as configured, or from the suffix. `.txt`/`.raw` mean `text_format`, which
    token classification sets to `conll` (CoNLL files are often named .txt)."""
    if fmt != "auto":
        return fmt
    suffix = FILE_SUFFIXES.get(path.suffix.lower())
    if suffix == "text":
        return text_format
    if suffix == "json":
        head = (text if text is not None else read_text_file(path))[:4096].lstrip()
        return "squad" if head.startswith("{") and '"data"' in head and '"paragraphs"' in head else "jsonl"
    if suffix is None:
        raise DataError(f"{path}: cannot tell the format from the suffix; set task.format")
    return suffix


# ---- tsv / csv -------------------------------------------------------------------------------
CSV_QUOTED_FIELD = re.compile(r'"(?:[^"]|"")*"', re.DOTALL)


def _plain_rows(lines: list[str], delimiter: str):
    """(line number, fields) of the non-blank lines, split on the delimiter with no quoting."""
    return [(n, line.split(delimiter)) for n, line in enumerate(lines, start=1)
            if line.strip() or delimiter in line]


def _csv_rows(path: Path, text: str, delimiter: str):
    """(first line, fields) of each record, with CSV quoting (the field "x ""y"" z" reads as x "y" z); strict: a stray
    quote or an unclosed one is an error naming the line."""
    csv.field_size_limit(2**31 - 1)  # long documents are legitimate cells
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=csv.QUOTE_MINIMAL,
                        strict=True)
    rows, before = [], 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            start = before + 1
            if "unexpected end of data" in str(err):
                raise DataError(f"{path}:{start}: a quoted field opened on this line is never closed") from None
            if reader.line_num > start:  # the record ran on past its line: most likely a quote left open
                raise DataError(f"{path}:{start}: bad quoting in the record from line {start} to line "
                                f"{reader.line_num} ({err}); is a quote on line {start} never closed?") from None
            raise DataError(f"{path}:{start}: bad quoting ({err}); a field that starts with \" must end with \" "
                            "and write inner quotes as \"\"") from None
        start, before = before + 1, reader.line_num
        if len(row) > 1 or (row and row[0].strip()):  # [] or [" "]: a blank line, not a row
            rows.append((start, row))
    return rows


def _uses_csv_quoting(path: Path, text: str, rows) -> bool:
    """Whether a tab-separated file quotes its fields CSV-style (as pandas and R write them) rather
    than holding bare quote characters (as the GLUE SST-2 and TREC files do). Signs of CSV quoting:
    every header name quoted, a whole field quoted with doubled inner quotes ("x ""y"" z"), or rows
    whose field count is right only when quotes are honoured (a quoted tab or line end)."""
    header = rows[0][1]
    if all(len(h) >= 2 and h[0] == h[-1] == '"' for h in header):
        return True
    for _, fields in rows:
        for cell in fields:
            if cell.startswith('"') and '""' in cell[1:-1] and CSV_QUOTED_FIELD.fullmatch(cell):
                return True
    if all(len(fields) == len(header) for _, fields in rows):
        return False
    try:
        quoted = _csv_rows(path, text, "\t")
    except DataError:
        return False  # not CSV either: the plain reading names the bad row
    return all(len(fields) == len(quoted[0][1]) for _, fields in quoted)


def read_delimited(path: Path, delimiter: str = "\t", text: str | None = None) -> Split:
    """A header line, then one row per line. TSV: no quoting unless the file is CSV-quoted (see
    `_uses_csv_quoting`); CSV: standard quoting, strictly. Blank lines are not rows; a line equal to
    the header (files joined with `cat`) is skipped with a count."""
    text = read_text_file(path) if text is None else text
    if delimiter != "\t":
        rows = _csv_rows(path, text, delimiter)
    else:
        rows = _plain_rows(split_lines(text), delimiter)
        if '"' in text and rows and _uses_csv_quoting(path, text, rows):
            first = next((n for n, fields in rows if any(c.startswith('"') for c in fields)), 1)
            logger.info("%s: read with CSV-style quoting (first quoted field on line %d)", path, first)
            rows = _csv_rows(path, text, delimiter)
    if not rows:
        raise DataError(f"{path}: the file is empty")
    (header_line, header), body = rows[0], rows[1:]
    header = [name.strip() for name in header]
    named = len(header)
    while named > 1 and not header[named - 1]:
        named -= 1
    if named < len(header) and all(len(row) in (named, len(header)) and not "".join(row[named:]).strip()
                                   for _, row in body):
        # A trailing delimiter on every line (as spreadsheets export): empty unnamed columns, dropped.
        header, body = header[:named], [(n, row[:named]) for n, row in body]
    for i, name in enumerate(header):
        if not name:
            raise DataError(f"{path}:{header_line}: column {i + 1} of the header has no name")
        if name in header[:i]:
            raise DataError(f"{path}:{header_line}: column '{name}' appears twice in the header")
    names = ", ".join(header)
    kept, where, skips = [], [], Skips()
    for line_no, row in body:
        if [cell.strip() for cell in row] == header:
            skips.add("a repeat of the header line", f"{path}:{line_no}")
            continue
        if len(row) != len(header):
            hint = "; fields are separated by tabs" if delimiter == "\t" else ""
            raise DataError(f"{path}:{line_no}: expected {len(header)} columns ({names}), got {len(row)}{hint}")
        kept.append(row)
        where.append(line_no)
    notes = skips.log()
    data = datasets.Dataset.from_dict({name: [row[i] for row in kept] for i, name in enumerate(header)})
    return Split(data, str(path), where, "tsv" if delimiter == "\t" else "csv", notes)


def read_tsv(path: Path, delimiter: str = "\t") -> datasets.Dataset:
    return read_delimited(path, delimiter).data


# ---- CoNLL -----------------------------------------------------------------------------------
def read_conll(path: Path, text: str | None = None) -> Split:
    """`token ... tag` per line (tag last), sentences separated by blank lines; -DOCSTART- lines end
    a sentence and are skipped. Every token line has as many columns as the first one."""
    text = read_text_file(path) if text is None else text
    sentences, tags, starts = [], [], []
    tokens_now, tags_now, start, width, width_line = [], [], 0, None, 0

    def close():
        nonlocal tokens_now, tags_now
        if tokens_now:
            sentences.append(tokens_now)
            tags.append(tags_now)
            starts.append(start)
            tokens_now, tags_now = [], []

    for line_no, line in enumerate(split_lines(text), start=1):
        parts = line.split()
        if not parts:
            close()
            continue
        if parts[0] == "-DOCSTART-":
            close()
            continue
        if len(parts) < 2:
            raise DataError(f"{path}:{line_no}: expected 'token tag', got {clip(line)}")
        if width is None:
            width, width_line = len(parts), line_no
        elif len(parts) != width:
            raise DataError(
                f"{path}:{line_no}: {len(parts)} columns, but line {width_line} has {width}; every token line "
                f"needs the same columns (a token with a space in it?): {clip(line)}"
            )
        if not tokens_now:
            start = line_no
        tokens_now.append(parts[0])
        tags_now.append(parts[-1])
    close()
    return Split(datasets.Dataset.from_dict({"tokens": sentences, "tags": tags}), str(path), starts, "conll")


# ---- plain text ------------------------------------------------------------------------------
def read_text(path: Path, text: str | None = None) -> Split:
    """One row per line; blank (whitespace-only) lines are not rows (they separate paragraphs)."""
    text = read_text_file(path) if text is None else text
    rows = [(n, line) for n, line in enumerate(split_lines(text), start=1) if line.strip()]
    if not rows:
        raise DataError(f"{path}: no text (the file is empty or every line is blank)")
    return Split(datasets.Dataset.from_dict({"text": [line for _, line in rows]}), str(path),
                 [n for n, _ in rows], "text")


def readers() -> dict:
    from lmdistill.tasks.json_io import read_jsonl, read_squad  # json_io builds on this module

    return {
        "tsv": read_delimited,
        "csv": lambda p, text=None: read_delimited(p, ",", text),
        "jsonl": read_jsonl,
        "json": read_jsonl,
        "conll": read_conll,
        "squad": read_squad,
        "text": read_text,
    }


def load_rows(
    source: str,
    key: str,
    fmt: str = "auto",
    search_dirs: list[Path] | None = None,
    hub_subset: str | None = None,
    text_format: str = "text",
) -> Split:
    """Load one split with the place of each row. `key` is the config key (`task.train`) that errors name."""
    path = resolve_path(source, search_dirs)
    if path is None:
        # No such file: `hub:NAME@SPLIT`, or a bare name without a file suffix, is a hub dataset.
        if source.startswith("hub:") or (not Path(source).suffix and not source.startswith((".", "/", "~"))):
            data = load_hub(source, key, hub_subset, "train" if key.endswith("train") else "validation")
            return Split(data, source)
        raise DataError(f"{key}: file not found: {source}")
    if path.is_dir():
        if fmt not in ("brat", "auto") or not any(path.glob("*.ann")):
            raise DataError(f"{key}: {path} is a folder; give a file (or a folder of brat .txt/.ann files)")
        from lmdistill.tasks.brat import read_brat  # brat builds on this module

        return read_brat(path)
    if fmt == "brat":
        raise DataError(f"{key}: {path} is a file; task.format brat reads a folder of brat .txt/.ann files")
    if not path.is_file():
        raise DataError(f"{key}: {path} is not a regular file")
    text = read_text_file(path)
    kind = detect_format(path, fmt, text_format, text)
    try:
        split = readers()[kind](path, text=text)
    except DataError:
        raise
    except Exception as err:  # a malformed file the checks above did not foresee; say which
        raise DataError(f"{key}: cannot read {path} as {kind}: {str(err).splitlines()[0]}") from None
    if len(split.data) == 0:
        only = " (only a header line)" if kind in ("tsv", "csv") else ""
        raise DataError(f"{key}: {source} has no rows{only}")
    return split


def load_split(
    source: str,
    key: str,
    fmt: str = "auto",
    search_dirs: list[Path] | None = None,
    hub_subset: str | None = None,
    max_samples: int | None = None,
    text_format: str = "text",
) -> datasets.Dataset:
    """Load one split as a Dataset (no task checks); `max_samples` keeps the first N rows."""
    data = load_rows(source, key, fmt, search_dirs, hub_subset, text_format).data
    if max_samples is not None and max_samples < len(data):
        data = data.select(range(max_samples))
    return data
