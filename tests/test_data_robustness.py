"""Data broken the way real files are: each case gets a one-line DataError naming the file and line,
or a documented, counted skip (`N rows skipped: ... (first at FILE:LINE)`), never a traceback and
never a silent change of the rows. Then a fuzz test: a few hundred mutated slices of data/ go
through the loading path of a run (`build_task`, then tokenization; a handful through the CLI).

Inputs are slices of the real files in data/; expected rows are computed independently (the csv
module, pandas' writer, seqeval's entity reader, str.find), not copied from the code under test.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import os
import random
import time
from pathlib import Path

import pytest
import yaml

from conftest import DATA
from lmdistill.config import TaskConfig
from lmdistill.errors import ConfigError, DataError
from lmdistill.tasks import build_task

SST2 = DATA / "sst2" / "train.tsv"
TREC = DATA / "trec" / "train.tsv"
WIKIANN = DATA / "wikiann_en" / "train.txt"
SQUAD = DATA / "squad_v1.1" / "train-v1.1.University_of_Notre_Dame.json"
WIKITEXT = DATA / "wikitext2" / "train.txt"


# ---- helpers -----------------------------------------------------------------------------------
def head_lines(path: Path, n: int) -> list[str]:
    """The first n lines of a real file, without their line ends."""
    with path.open(encoding="utf-8", newline="") as handle:
        return [next(handle).rstrip("\r\n") for _ in range(n)]


def sst2_rows(n: int = 20) -> list[list[str]]:
    """Rows (sentence, label) of the real SST-2 train file, header first, split independently."""
    return [line.split("\t") for line in head_lines(SST2, n + 1)]


def conll_sentences(n: int = 6) -> list[list[tuple[str, str]]]:
    sentences, now = [], []
    with WIKIANN.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                if now:
                    sentences.append(now)
                    now = []
                    if len(sentences) == n:
                        break
                continue
            word, tag = line.split()
            now.append((word, tag))
    return sentences


def squad_slice(articles: int = 1, paragraphs: int = 2) -> dict:
    payload = json.loads(SQUAD.read_text(encoding="utf-8"))
    data = payload["data"][:articles]
    for article in data:
        article["paragraphs"] = article["paragraphs"][:paragraphs]
    return {"data": data, "version": "1.1"}


def write(path: Path, content: str | bytes) -> str:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def tsv_text(rows: list[list[str]], end: str = "\n") -> str:
    return "".join("\t".join(row) + end for row in rows)


def classification(train: str, eval_: str | None = None, text="sentence", label="label", **extra):
    return build_task(TaskConfig(kind="classification", train=train, eval=eval_ or train, text=text, label=label,
                                 **extra))


def ner(train: str, eval_: str | None = None, **extra):
    return build_task(TaskConfig(kind="token-classification", train=train, eval=eval_ or train, **extra))


def qa(train: str, eval_: str | None = None, **extra):
    return build_task(TaskConfig(kind="question-answering", train=train, eval=eval_ or train, **extra))


def data_error(fn, *fragments) -> str:
    """Run fn, expect a DataError whose one-line message holds every fragment; return the message."""
    with pytest.raises(DataError) as caught:
        fn()
    message = str(caught.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def skip_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lmdistill" and r.levelno == logging.WARNING]


@pytest.fixture(autouse=True)
def _warnings(caplog):
    caplog.set_level(logging.INFO, logger="lmdistill")


# ---- encodings: BOM and CRLF are normal, invalid bytes are errors ------------------------------
def test_bom_and_crlf_read_the_same_rows_in_every_format(tmp_path):
    """A UTF-8 BOM and CRLF line ends are encoding details: every reader gives exactly the rows of
    the plain file (column names included: a BOM must not stick to the first header name)."""
    sentences = conll_sentences(4)
    plain = {
        "tsv": tsv_text(sst2_rows(12)),
        "csv": _csv_text(sst2_rows(12)),
        "conll": "\n\n".join("\n".join(f"{w}\t{t}" for w, t in s) for s in sentences) + "\n",
        "jsonl": "".join(json.dumps({"sentence": s, "label": int(y)}) + "\n" for s, y in sst2_rows(12)[1:]),
        "json": json.dumps(squad_slice(), indent=1) + "\n",
        "txt": "\n".join(head_lines(WIKITEXT, 15)) + "\n",
    }
    from lmdistill.tasks.io import load_rows

    for suffix, text in plain.items():
        fmt = {"conll": "conll", "txt": "text"}.get(suffix, "auto")
        reference = load_rows(write(tmp_path / f"plain.{suffix}", text), "task.train", fmt).data.to_dict()
        for variant, content in {
            "bom": codecs.BOM_UTF8 + text.encode("utf-8"),
            "crlf": text.replace("\n", "\r\n").encode("utf-8"),
            "bom+crlf": codecs.BOM_UTF8 + text.replace("\n", "\r\n").encode("utf-8"),
        }.items():
            path = write(tmp_path / f"{variant}.{suffix}", content)
            assert load_rows(path, "task.train", fmt).data.to_dict() == reference, (suffix, variant)


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def test_invalid_utf8_names_the_line_and_byte_offset(tmp_path):
    lines = [line.encode("utf-8") for line in head_lines(SST2, 8)]
    lines[4] = lines[4][:10] + b"\xe9" + lines[4][10:]  # a Latin-1 e-acute in the middle of line 5
    content = b"\n".join(lines) + b"\n"
    path = write(tmp_path / "latin1.tsv", content)
    offset = content.index(b"\xe9")
    data_error(lambda: classification(path), f"latin1.tsv:5: not valid UTF-8 (byte 0xe9 at byte offset {offset})")


def test_utf16_and_nul_bytes_are_errors(tmp_path):
    text = tsv_text(sst2_rows(5))
    utf16 = write(tmp_path / "utf16.tsv", text.encode("utf-16"))  # with its byte-order mark
    data_error(lambda: classification(utf16), "utf16.tsv: the file is UTF-16")
    lines = text.split("\n")
    lines[3] = lines[3][:5] + "\0" + lines[3][5:]
    nul = write(tmp_path / "nul.tsv", "\n".join(lines))
    data_error(lambda: classification(nul), "nul.tsv:4: a NUL byte")


def test_a_folder_and_a_missing_file(tmp_path):
    (tmp_path / "train.tsv").mkdir()
    data_error(lambda: classification(str(tmp_path / "train.tsv")), "task.train:", "is a folder")
    data_error(lambda: classification(str(tmp_path / "nope.tsv")), "task.train: file not found")


# ---- TSV / CSV structure ---------------------------------------------------------------------
def test_blank_lines_are_not_rows_and_line_numbers_stay_true(tmp_path):
    rows = sst2_rows(10)
    text = tsv_text(rows[:4]) + "\n   \n" + tsv_text(rows[4:]) + "\n\n"
    task = classification(write(tmp_path / "blank.tsv", text))
    assert list(task.raw_train["sentence"]) == [r[0] for r in rows[1:]]
    # A bad row after the blank lines is named by its real line number.
    bad = text.replace(rows[6][0] + "\t", rows[6][0] + " ", 1)
    line = bad.split("\n").index(rows[6][0] + " " + rows[6][1]) + 1
    data_error(lambda: classification(write(tmp_path / "bad.tsv", bad)), f"bad.tsv:{line}: expected 2 columns")


def test_rows_with_too_many_or_too_few_fields(tmp_path):
    rows = sst2_rows(6)
    few = [*rows[:3], [rows[3][0]], *rows[4:]]
    data_error(lambda: classification(write(tmp_path / "few.tsv", tsv_text(few))),
               "few.tsv:4: expected 2 columns (sentence, label), got 1")
    many = [*rows[:5], [*rows[5], "extra"]]
    data_error(lambda: classification(write(tmp_path / "many.tsv", tsv_text(many))),
               "many.tsv:6: expected 2 columns (sentence, label), got 3")


def test_missing_column_names_the_file_and_the_key(tmp_path):
    dropped = [[row[0]] for row in sst2_rows(6)]  # the label column dropped
    path = write(tmp_path / "nolabel.tsv", tsv_text(dropped))
    data_error(lambda: classification(path), "nolabel.tsv: no column 'label' (columns: sentence); set task.label")


def test_header_problems(tmp_path):
    rows = sst2_rows(6)
    data_error(lambda: classification(write(tmp_path / "dup.tsv", tsv_text([["sentence", "sentence"], *rows[1:]]))),
               "dup.tsv:1: column 'sentence' appears twice in the header")
    data_error(lambda: classification(write(tmp_path / "noname.tsv", tsv_text([["sentence", ""], *rows[1:]]))),
               "noname.tsv:1: column 2 of the header has no name")
    # A trailing delimiter on every line (a spreadsheet export): the empty unnamed column goes.
    trailing = classification(write(tmp_path / "trailing.csv", _csv_text([[*r, ""] for r in rows])))
    assert trailing.raw_train.to_dict() == {"sentence": [r[0] for r in rows[1:]], "label": [r[1] for r in rows[1:]]}
    data_error(lambda: classification(write(tmp_path / "header.csv", "sentence,label\n")),
               "task.train:", "header.csv has no rows (only a header line)")


def test_a_repeated_header_line_is_skipped_with_a_count(tmp_path, caplog):
    rows = sst2_rows(10)
    joined = tsv_text(rows[:6]) + tsv_text([rows[0], *rows[6:]])  # two files joined with cat
    path = write(tmp_path / "joined.tsv", joined)
    task = classification(path)
    assert list(task.raw_train["sentence"]) == [r[0] for r in rows[1:]]
    assert f"1 row skipped: a repeat of the header line (first at {path}:7)" in skip_lines(caplog)
    assert any("repeat of the header" in note for note in task.data_notes)


# ---- quoting ---------------------------------------------------------------------------------
def test_bare_quotes_in_tsv_are_text(tmp_path):
    """GLUE-style TSV: quote characters are part of the text, never quoting (as SST-2/TREC upstream)."""
    rows = [["sentence", "label"], ['"Gladiator" is a film .', "1"], ['a "quote" inside', "0"],
            ['"whole cell quoted"', "1"], ['an odd " one', "0"], ['" starts with a quote', "1"]]
    task = classification(write(tmp_path / "bare.tsv", tsv_text(rows)))
    assert list(task.raw_train["sentence"]) == [r[0] for r in rows[1:]]


def test_csv_quoted_tsv_is_unquoted(tmp_path):
    """A TSV written with CSV quoting (pandas' default): fields holding quotes, tabs or line ends come
    back exactly as they were written."""
    import pandas as pd

    sentences = ['he said "hi" .', "a tab\tinside", "two\nlines", "plain text", '"quoted" at the start']
    path = tmp_path / "pandas.tsv"
    pd.DataFrame({"sentence": sentences, "label": [1, 0, 1, 0, 1]}).to_csv(path, sep="\t", index=False)
    task = classification(str(path))
    assert list(task.raw_train["sentence"]) == sentences
    assert list(task.raw_train["label"]) == ["1", "0", "1", "0", "1"]
    # R's write.table quotes everything, the header too.
    r_style = '"sentence"\t"label"\n"a fine film"\t"1"\n"a bad one"\t"0"\n'
    task = classification(write(tmp_path / "r.tsv", r_style))
    assert task.raw_train.to_dict() == {"sentence": ["a fine film", "a bad one"], "label": ["1", "0"]}


def test_csv_quoting_is_strict(tmp_path):
    rows = _csv_text(sst2_rows(6)).split("\n")
    stray = list(rows)
    stray[3] = '"a quote"then text,1'
    data_error(lambda: classification(write(tmp_path / "stray.csv", "\n".join(stray))), "stray.csv:4: bad quoting")
    unclosed = list(rows)
    unclosed[2] = '"never closed,1'  # runs into the next line's quoted field
    data_error(lambda: classification(write(tmp_path / "open.csv", "\n".join(unclosed))),
               "open.csv:3: bad quoting in the record from line 3 to line 4", "is a quote on line 3 never closed?")
    unclosed[-2] = '"never closed at the end,1'  # runs to the end of the file
    data_error(lambda: classification(write(tmp_path / "end.csv", "\n".join(unclosed[:2] + unclosed[-2:]))),
               "end.csv:3: a quoted field opened on this line is never closed")
    # A quoted field over two lines: the row after it is still named by its own line.
    multi = rows[:2] + ['"one\nfield",0'] + rows[2:4] + ["only one field"]
    data_error(lambda: classification(write(tmp_path / "multi.csv", "\n".join(multi))),
               "multi.csv:7: expected 2 columns")


# ---- cells: empty text, no label, mixed label types -------------------------------------------
def test_empty_text_and_missing_labels_are_counted_skips(tmp_path, caplog):
    rows = sst2_rows(20)
    empty_at, nolabel_at = {3, 7, 11}, {5, 15}  # body row indices (1-based rows of `rows`)
    for i in empty_at:
        rows[i][0] = "  "
    for i in nolabel_at:
        rows[i][1] = ""
    path = write(tmp_path / "holes.tsv", tsv_text(rows))
    task = classification(path)
    kept = [r for i, r in enumerate(rows) if i and i not in empty_at | nolabel_at]
    assert list(task.raw_train["sentence"]) == [r[0] for r in kept]
    lines = skip_lines(caplog)
    assert f"3 rows skipped: empty text in column 'sentence' (first at {path}:4)" in lines
    assert f"2 rows skipped: no label in column 'label' (first at {path}:6)" in lines
    # max_train_samples counts usable rows.
    assert len(classification(path, max_train_samples=10).raw_train) == 10


def test_nothing_usable_is_an_error(tmp_path):
    rows = [["sentence", "label"], ["", "1"], [" ", "0"]]
    data_error(lambda: classification(write(tmp_path / "void.tsv", tsv_text(rows))),
               "task.train:", "has no usable rows", "2 rows skipped: empty text")


def test_one_label_written_two_ways_is_an_error(tmp_path):
    rows = sst2_rows(12)
    rows[8][1] = "1.0" if rows[8][1] == "1" else "0.0"
    path = write(tmp_path / "float.tsv", tsv_text(rows))
    first = next(i for i, r in enumerate(rows) if r[1] == rows[8][1][0]) + 1
    data_error(lambda: classification(path), f"float.tsv:9: label '{rows[8][1]}'", f"float.tsv:{first})",
               "written another way")


def test_numbers_and_words_in_one_label_column_are_an_error(tmp_path):
    rows = sst2_rows(12)
    rows[10][1] = "pos"
    data_error(lambda: classification(write(tmp_path / "mixed.tsv", tsv_text(rows))),
               "mixed.tsv:11: label 'pos' in column 'label' is a word", "numbers such as")


def test_jsonl_labels_ints_and_strings(tmp_path):
    rows = sst2_rows(12)[1:]
    # 1 and "1" are the same label (JSON types are an encoding detail) ...
    same = "".join(json.dumps({"sentence": s, "label": int(y) if i % 2 else y}) + "\n"
                   for i, (s, y) in enumerate(rows))
    task = classification(write(tmp_path / "same.jsonl", same))
    assert task.labels == ["0", "1"] and list(task.raw_train["label"]) == [y for _, y in rows]
    # ... but ints and words are two label encodings, and 1 / 1.0 one class written two ways.
    mixed = same.splitlines()
    mixed[4] = json.dumps({"sentence": rows[4][0], "label": "positive"})
    data_error(lambda: classification(write(tmp_path / "mixed.jsonl", "\n".join(mixed))),
               "mixed.jsonl:5: label 'positive'", "is a word")
    floats = same.splitlines()
    floats[6] = json.dumps({"sentence": rows[6][0], "label": float(rows[6][1])})
    data_error(lambda: classification(write(tmp_path / "floats.jsonl", "\n".join(floats))),
               "floats.jsonl:7:", "written another way")


def test_eval_label_spelled_otherwise_than_in_train(tmp_path):
    rows = sst2_rows(12)
    train = write(tmp_path / "train.tsv", tsv_text(rows))
    first = next(i for i, r in enumerate(rows) if r[1] == "0")
    rows = [[s, y + ".0" if y == "0" else y] for s, y in rows]  # one spelling within dev, another in train
    dev = write(tmp_path / "dev.tsv", tsv_text(rows))
    data_error(lambda: classification(train, dev), f"dev.tsv:{first + 1}: label '0.0'", "is label '0' in train",
               f"train.tsv:{first + 1})", "written another way")


# ---- JSON lines --------------------------------------------------------------------------------
def test_jsonl_line_that_is_not_json(tmp_path):
    lines = [json.dumps({"sentence": s, "label": y}) for s, y in sst2_rows(8)[1:]]
    broken = list(lines)
    broken[4] = broken[4][:-7]  # cut short
    data_error(lambda: classification(write(tmp_path / "cut.jsonl", "\n".join(broken))), "cut.jsonl:5: not valid JSON")
    nan = list(lines)
    nan[2] = '{"sentence": "x", "label": NaN}'
    data_error(lambda: classification(write(tmp_path / "nan.jsonl", "\n".join(nan))),
               "nan.jsonl:3: not valid JSON (NaN is not valid JSON)")
    twice = list(lines)
    twice[3] = '{"sentence": "x", "label": 1, "label": 0}'
    data_error(lambda: classification(write(tmp_path / "twice.jsonl", "\n".join(twice))),
               "twice.jsonl:4: not valid JSON (the key 'label' appears twice in one object)")
    array = list(lines)
    array[1] = '["a", "list"]'
    data_error(lambda: classification(write(tmp_path / "array.jsonl", "\n".join(array))),
               "array.jsonl:2: a list, not an object")
    pretty = json.dumps({"rows": [json.loads(x) for x in lines]}, indent=2)
    data_error(lambda: classification(write(tmp_path / "pretty.json", pretty)), "pretty.json: one JSON object")
    # A whole-file JSON array of objects is fine, and blank lines in JSON lines are not rows.
    whole = "[" + ",\n".join(lines) + "]"
    assert len(classification(write(tmp_path / "whole.json", whole)).raw_train) == len(lines)
    assert len(classification(write(tmp_path / "gaps.jsonl", "\n\n".join(lines) + "\n\n")).raw_train) == len(lines)


def test_jsonl_missing_keys_and_wrong_kinds(tmp_path, caplog):
    rows = [{"sentence": s, "label": y} for s, y in sst2_rows(8)[1:]]
    del rows[2]["label"]
    rows[5]["sentence"] = None
    path = write(tmp_path / "keys.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    task = classification(path)
    assert len(task.raw_train) == len(rows) - 2
    assert f"1 row skipped: no label in column 'label' (first at {path}:3)" in skip_lines(caplog)
    assert f"1 row skipped: no text in column 'sentence' (first at {path}:6)" in skip_lines(caplog)
    rows[5]["sentence"] = ["a", "list"]
    path = write(tmp_path / "kinds.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    data_error(lambda: classification(path), "kinds.jsonl:6: 'sentence' holds a list here but a scalar at",
               "kinds.jsonl:1")


# ---- CoNLL / token classification ---------------------------------------------------------------
def conll_text(sentences) -> str:
    return "\n\n".join("\n".join(" ".join(cols) for cols in s) for s in sentences) + "\n"


def test_conll_column_count_that_changes(tmp_path):
    sentences = [[(w, "NN", t) for w, t in s] for s in conll_sentences(3)]  # word POS tag
    good = conll_text(sentences)
    assert ner(write(tmp_path / "three.conll", good)).raw_train["tags"] == [[t for _, _, t in s] for s in sentences]
    lines = good.split("\n")
    lines[2] = lines[2].replace(" NN ", " ")  # the POS column missing on line 3: its tag must not shift
    data_error(lambda: ner(write(tmp_path / "shift.conll", "\n".join(lines))),
               "shift.conll:3: 2 columns, but line 1 has 3")
    lines = good.split("\n")
    lines[1] = "New York NN B-LOC"  # a token with a space in a space-separated file
    data_error(lambda: ner(write(tmp_path / "space.conll", "\n".join(lines))), "space.conll:2: 4 columns")


def test_invalid_iob_is_repaired_as_conlleval_reads_it(tmp_path, caplog):
    from seqeval.metrics.sequence_labeling import get_entities

    sentences = conll_sentences(8)
    broken = [[(w, t) for w, t in s] for s in sentences]
    # Every B- becomes I-: IOB1 as in the original CoNLL-2003 files, and "I-X after O" everywhere.
    broken = [[(w, "I-" + t[2:] if t.startswith("B-") else t) for w, t in s] for s in broken]
    # ... and one I-LOC right after an I-PER: a new entity of another type.
    broken[0] = [("Anna", "I-PER"), ("Berlin", "I-LOC"), ("is", "O")]
    path = write(tmp_path / "iob1.conll", conll_text(broken))
    task = ner(path)
    repaired = list(task.raw_train["tags"])
    for before, after in zip(broken, repaired):
        tags = [t for _, t in before]
        assert get_entities(after) == get_entities(tags)  # the same entities, as conlleval reads them
        for k, tag in enumerate(after):  # valid IOB2: an I-X only continues an X
            assert not tag.startswith("I-") or (k and after[k - 1][2:] == tag[2:])
    count = sum(a != t for s, r in zip(broken, repaired) for (_, t), a in zip(s, r))
    assert count > 2
    assert f"{count} tags repaired: an I- tag that begins an entity (after O or another type) read as B-, " \
           f"as conlleval reads it (first at {path}:1)" in skip_lines(caplog)
    assert "B-LOC" in task.labels and repaired[0] == ["B-PER", "B-LOC", "O"]


def test_iobes_tags_are_not_rewritten(tmp_path):
    sentences = [[("Anna", "S-PER"), ("Berlin", "I-LOC"), ("x", "O")], [("New", "B-LOC"), ("York", "E-LOC")]]
    task = ner(write(tmp_path / "iobes.conll", conll_text(sentences)))
    assert list(task.raw_train["tags"]) == [[t for _, t in s] for s in sentences]


def test_token_jsonl_lengths_and_empty_words(tmp_path, caplog):
    rows = [{"tokens": [w for w, _ in s], "tags": [t for _, t in s]} for s in conll_sentences(6)]
    short = [dict(r) for r in rows]
    short[3]["tags"] = short[3]["tags"][:-1]
    n = len(rows[3]["tokens"])
    data_error(lambda: ner(write(tmp_path / "short.jsonl", "".join(json.dumps(r) + "\n" for r in short))),
               f"short.jsonl:4: {n} words in 'tokens' but {n - 1} tags in 'tags'")
    holes = [dict(r) for r in rows]
    holes[1]["tokens"] = ["", *holes[1]["tokens"][1:]]
    holes[4]["tokens"], holes[4]["tags"] = [], []
    path = write(tmp_path / "holes.jsonl", "".join(json.dumps(r) + "\n" for r in holes))
    task = ner(path)
    assert list(task.raw_train["tokens"]) == [r["tokens"] for i, r in enumerate(rows) if i not in (1, 4)]
    assert any(line.startswith("1 row skipped: an empty word") and f"{path}:2)" in line for line in skip_lines(caplog))
    assert f"1 row skipped: no words (first at {path}:5)" in skip_lines(caplog)


# ---- SQuAD ---------------------------------------------------------------------------------------
def qas_of(payload) -> list[dict]:
    return [qa for a in payload["data"] for p in a["paragraphs"] for qa in p["qas"]]


def test_squad_offsets_that_do_not_match_are_reanchored(tmp_path, caplog):
    payload = squad_slice()
    context = payload["data"][0]["paragraphs"][0]["context"]
    qas = payload["data"][0]["paragraphs"][0]["qas"]
    answer = qas[0]["answers"][0]
    true_start = answer["answer_start"]
    answer["answer_start"] = true_start + 3  # off by a few (byte offsets, an edited context)
    qas[1]["answers"][0]["answer_start"] = len(context) + 50  # beyond the context
    del qas[2]["answers"][0]["answer_start"]  # missing
    qas[3]["answers"][0]["text"] = "words that are nowhere in this paragraph"
    path = write(tmp_path / "offsets.json", json.dumps(payload))
    task = qa(path, str(SQUAD))
    rows = {r["id"]: r for r in task.raw_train}
    for qa_item in qas_of(payload):
        if qa_item is qas[3]:
            assert qa_item["id"] not in rows
            continue
        got = rows[qa_item["id"]]["answers"]
        start, text = got["answer_start"][0], got["text"][0]
        assert rows[qa_item["id"]]["context"][start:start + len(text)] == text
    assert rows[qas[0]["id"]]["answers"]["answer_start"] == [context.find(answer["text"], true_start - 10)]
    lines = skip_lines(caplog)
    assert any(line.startswith("3 answers re-anchored: answer_start does not point at the answer text") and
               f"{path} (data[0].paragraphs[0].qas[0], id {qas[0]['id']}))" in line for line in lines), lines
    assert any(line.startswith("1 answer dropped: the answer text is not in the context") for line in lines)
    assert any(line.startswith("1 row skipped: no answer left") for line in lines)


def test_squad_missing_answers_keys_and_duplicate_ids(tmp_path, caplog):
    payload = squad_slice()
    qas = payload["data"][0]["paragraphs"][0]["qas"]
    del qas[0]["answers"]
    path = write(tmp_path / "noanswers.json", json.dumps(payload))
    task = qa(path)
    assert qas[0]["id"] not in set(task.raw_train["id"]) and qas[0]["id"] not in set(task.raw_eval["id"])
    assert any(line.startswith("1 row skipped: no answer (SQuAD v2 unanswerable") for line in skip_lines(caplog))
    del qas[1]["question"]
    path = write(tmp_path / "noquestion.json", json.dumps(payload))
    data_error(lambda: qa(path), "noquestion.json (data[0].paragraphs[0].qas[1]): 'question' must be text, got nothing")
    # Eval ids: a repeat of the same question is skipped, another question under the same id is an error.
    payload = squad_slice()
    qas = payload["data"][0]["paragraphs"][0]["qas"]
    qas.append(dict(qas[0]))
    dev = write(tmp_path / "repeat.json", json.dumps(payload))
    assert len(qa(str(SQUAD), dev).raw_eval) == len(qas_of(payload)) - 1
    qas[-1] = dict(qas[1], id=qas[0]["id"])
    dev = write(tmp_path / "clash.json", json.dumps(payload))
    data_error(lambda: qa(str(SQUAD), dev), "clash.json (data[0].paragraphs[0].qas[", "is also the id of another question")


def test_squad_not_squad(tmp_path):
    data_error(lambda: qa(write(tmp_path / "cut.json", SQUAD.read_text()[:5000]), format="squad"),
               "cut.json:1: not valid JSON")
    data_error(lambda: qa(write(tmp_path / "list.json", '{"data": {"paragraphs": []}}'), format="squad"),
               "list.json: SQuAD json needs a top-level object with a 'data' list")


# ---- language modelling ----------------------------------------------------------------------
def test_lm_files_with_no_text(tmp_path, caplog):
    lm = lambda p: build_task(TaskConfig(kind="language-modeling", train=p, eval=p, lm_type="masked"))  # noqa: E731
    data_error(lambda: lm(write(tmp_path / "blank.txt", " \n\n\t\n \r\n")), "blank.txt: no text")
    data_error(lambda: lm(write(tmp_path / "empty.txt", "")), "empty.txt: no text")
    lines = head_lines(WIKITEXT, 12)
    rows = [{"text": line} for line in lines] + [{"text": "   "}, {"other": 1}]
    path = write(tmp_path / "lm.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    task = lm(path)
    assert list(task.raw_train["text"]) == [line for line in lines if line.strip()]
    assert any(line.startswith("1 row skipped: no text in column 'text'") for line in skip_lines(caplog))


def test_corpus_files_read_like_data_files(tmp_path):
    from lmdistill.tasks.corpus import read_paragraphs

    text = "\n".join(head_lines(WIKITEXT, 20)) + "\n"
    plain = read_paragraphs(Path(write(tmp_path / "plain.txt", text)))
    assert plain and plain == read_paragraphs(Path(write(tmp_path / "bom.txt", codecs.BOM_UTF8 +
                                                            text.replace("\n", "\r\n").encode())))
    lines = text.encode().split(b"\n")
    lines[6] += b"\x92"  # a Windows-1252 apostrophe
    data_error(lambda: read_paragraphs(Path(write(tmp_path / "cp1252.txt", b"\n".join(lines)))),
               "cp1252.txt:7: not valid UTF-8 (byte 0x92")


# ---- the data shipped in data/ reads as before -------------------------------------------------
def test_shipped_tsv_files_read_as_plain_tab_separated_lines():
    """SST-2 and TREC: every row is exactly the line split on tabs (no quoting, no skips)."""
    for path in [SST2, DATA / "sst2" / "dev.tsv", DATA / "sst2" / "test.tsv", TREC, DATA / "trec" / "test.tsv"]:
        lines = path.read_text(encoding="utf-8").splitlines()
        header, body = lines[0].split("\t"), [line.split("\t") for line in lines[1:]]
        from lmdistill.tasks.io import load_rows

        data = load_rows(str(path), "task.train").data
        assert data.column_names == header
        assert [list(r) for r in zip(*[data[c] for c in header])] == body


# ---- fuzz -------------------------------------------------------------------------------------
INSERTS = [b'"', b"\t", codecs.BOM_UTF8, b"\0", b"\r", b"\n", b"\r\n", b",", b"{", b"}", b"[", b"]", b"\\",
           b"\xff", b"\xc3", b" ", b"-", b"I-PER", b"B-", "\u2028".encode(), b'""', b"null", b":"]
LABELS = ["1.0", "pos", "", " 1", "-1", "1e3", "01", "NaN", "null", "[1]", "I-PER", "O", "B-LOC", "2"]


def _seeds() -> list[tuple[str, bytes, dict]]:
    """(name, file bytes, TaskConfig keys) of clean slices of every format."""
    sst = sst2_rows(30)
    trec = [line.split("\t") for line in head_lines(TREC, 30)]
    sentences = conll_sentences(10)
    wiki = head_lines(WIKITEXT, 30)
    squad = squad_slice(1, 2)
    squad["data"][0]["paragraphs"][1]["qas"] = squad["data"][0]["paragraphs"][1]["qas"][:3]
    return [
        ("sst2.tsv", tsv_text(sst).encode(), dict(kind="classification", text="sentence", label="label")),
        ("trec.tsv", tsv_text(trec).encode(), dict(kind="classification", text="question", label="label_coarse")),
        ("sst2.csv", _csv_text(sst).encode(), dict(kind="classification", text="sentence", label="label")),
        ("sst2.jsonl", "".join(json.dumps({"sentence": s, "label": int(y)}) + "\n" for s, y in sst[1:]).encode(),
         dict(kind="classification", text="sentence", label="label")),
        ("wikiann.conll", conll_text(sentences).encode(), dict(kind="token-classification")),
        ("wikiann.jsonl", "".join(json.dumps({"tokens": [w for w, _ in s], "tags": [t for _, t in s]}) + "\n"
                                  for s in sentences).encode(), dict(kind="token-classification")),
        ("squad.json", json.dumps(squad, indent=1).encode(), dict(kind="question-answering", max_length=64,
                                                                   doc_stride=16)),
        ("wikitext.txt", ("\n".join(wiki) + "\n").encode(), dict(kind="language-modeling", lm_type="masked",
                                                                 max_length=16)),
    ]


def _mutate(name: str, content: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One mutation of a file; returns (new bytes, what was done)."""
    how = rng.choice(["truncate", "flip", "insert", "insert", "drop_column", "column_count", "label", "label",
                      "json_value", "blank_lines"])
    lines = content.split(b"\n")
    if how == "truncate":
        return content[:rng.randrange(len(content) + 1)], how
    if how == "flip":
        data = bytearray(content)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data), how
    if how == "insert":
        at = rng.randrange(len(content) + 1)
        return content[:at] + rng.choice(INSERTS) + content[at:], how
    if how == "blank_lines":
        at = rng.randrange(len(lines))
        return b"\n".join(lines[:at] + [rng.choice([b"", b"   ", b"\t", b"\r"])] + lines[at:]), how
    sep = b"," if name.endswith(".csv") else b"\t" if name.endswith(".tsv") else b" "
    if how == "drop_column":
        k = rng.randrange(3)
        scope = range(len(lines)) if rng.random() < 0.5 else [rng.randrange(len(lines))]
        for i in scope:
            cells = lines[i].split(sep)
            if len(cells) > k:
                del cells[k]
            lines[i] = sep.join(cells)
        return b"\n".join(lines), how
    if how == "column_count":
        i = rng.randrange(len(lines))
        lines[i] = lines[i] + sep + b"extra" if rng.random() < 0.5 else lines[i].rsplit(sep, 1)[0]
        return b"\n".join(lines), how
    if how == "label":
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(lines))
            cells = lines[i].split(sep)
            cells[-1] = rng.choice(LABELS).encode()
            lines[i] = sep.join(cells)
        return b"\n".join(lines), how
    # json_value: a random value where a JSON value stood
    values = [b"null", b"1", b"1.5", b'"pos"', b"[]", b"{}", b'["a", 1]', b"true", b'""', b"-7", b"99999"]
    text = content
    for token in (b'"label": ', b'"tags": ', b'"tokens": ', b'"answer_start": ', b'"text": ', b'"id": ',
                  b'"context": ', b'"question": ', b'"answers": '):
        at = text.find(token, rng.randrange(len(text) + 1))
        if at >= 0 and rng.random() < 0.5:
            start = at + len(token)
            end = start
            depth = 0
            while end < len(text):  # the end of the value: a comma or brace at depth 0
                ch = text[end:end + 1]
                if ch in b"[{":
                    depth += 1
                elif ch in b"]}":
                    if depth == 0:
                        break
                    depth -= 1
                elif ch == b'"':
                    end = text.find(b'"', end + 1)
                    while end > 0 and text[end - 1:end] == b"\\":
                        end = text.find(b'"', end + 1)
                    if end < 0:
                        end = len(text)
                elif ch == b"," and depth == 0:
                    break
                end += 1
            text = text[:start] + rng.choice(values) + text[end:]
    return text, how


FUZZ_FILES = int(os.environ.get("LMDISTILL_FUZZ_FILES", "400"))


def _tokenizer():
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(DATA / "tokenizers" / "bert-base-uncased")


def test_fuzzed_files_never_reach_a_traceback(tmp_path, caplog):
    """FUZZ_FILES mutated slices go through build_task (and, when they load, tokenization of both
    splits with the real BERT tokenizer). Only DataError/ConfigError or success are allowed."""
    caplog.set_level(logging.ERROR, logger="lmdistill")
    rng = random.Random(1234)
    tokenizer = _tokenizer()
    seeds = _seeds()
    clean = {}
    for name, content, _ in seeds:
        clean[name] = write(tmp_path / f"clean-{name}", content)
    tracebacks, outcomes, started = [], {"ok": 0, "DataError": 0, "ConfigError": 0}, time.perf_counter()
    for n in range(FUZZ_FILES):
        name, content, keys = seeds[n % len(seeds)]
        steps = []
        for _ in range(rng.randint(1, 3)):
            content, how = _mutate(name, content, rng)
            steps.append(how)
        path = write(tmp_path / f"{n:04d}-{name}", content)
        # Half the time the broken file is the train split, else eval (with a clean train split).
        train, eval_ = (path, clean[name]) if n % 2 == 0 else (clean[name], path)
        try:
            task = build_task(TaskConfig(train=train, eval=eval_, **keys))
            if keys["kind"] == "language-modeling":
                task.bind(None)
            task.train_dataset(tokenizer)
            task.eval_dataset(tokenizer)
            outcomes["ok"] += 1
        except (DataError, ConfigError) as err:
            outcomes[type(err).__name__] += 1
            assert "\n" not in str(err), (path, str(err))
        except Exception as err:  # noqa: BLE001 - the point of the test
            tracebacks.append(f"{path} ({'+'.join(steps)}): {type(err).__name__}: {err}")
    seconds = time.perf_counter() - started
    print(f"\nfuzz: {FUZZ_FILES} files, {outcomes}, {len(tracebacks)} tracebacks, {seconds:.1f} s")
    assert not tracebacks, "\n".join(tracebacks[:10])
    assert outcomes["ok"] > FUZZ_FILES // 10 and outcomes["DataError"] > FUZZ_FILES // 10  # both paths exercised


def test_fuzzed_files_through_the_cli(tiny_classifier_dir, tmp_path, capsys):
    """A handful of broken and repaired files through `lmdistill run`: exit 0 with a report, or exit 2
    with one line naming the file and nothing written."""
    from lmdistill.cli import main

    rows = sst2_rows(40)
    cases = {
        "latin1": (tsv_text(rows).replace("film", "fílm").encode("latin-1"), 2),
        "nul": (tsv_text(rows).encode()[:300] + b"\0" + tsv_text(rows).encode()[300:], 2),
        "fields": (tsv_text(rows[:10] + [rows[10] + ["x"]] + rows[11:]).encode(), 2),
        "mixed": (tsv_text(rows[:5] + [[rows[5][0], "1.0"]] + rows[6:]).encode(), 2),
        "bom-crlf-blank": (codecs.BOM_UTF8 + (tsv_text(rows[:20]) + "\n" + tsv_text(rows[20:])).replace(
            "\n", "\r\n").encode(), 0),
        "holes": (tsv_text(rows[:7] + [["", "1"], [rows[7][0], ""]] + rows[7:]).encode(), 0),
    }
    for name, (content, expected) in cases.items():
        train = write(tmp_path / f"{name}.tsv", content)
        out = tmp_path / f"out-{name}"
        config = {
            "teacher": {"path": str(tiny_classifier_dir)},
            "student": {"layers": [0, 2]},
            "task": {"kind": "classification", "train": train, "eval": str(DATA / "sst2" / "dev.tsv"),
                     "text": "sentence", "label": "label", "max_length": 32, "max_eval_samples": 16},
            "recipe": {"name": "kd"},
            "training": {"epochs": 1, "batch_size": 16, "seed": 0, "num_threads": 1},
            "bench": {"enabled": False},
            "output": str(out),
            "cache_dir": str(tmp_path / "cache"),
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        code = main(["run", str(path)])
        err = capsys.readouterr().err
        assert code == expected, (name, err[-2000:])
        assert "Traceback" not in err
        if expected == 2:
            errors = [line for line in err.splitlines() if line.startswith("lmdistill: error:")]
            assert len(errors) == 1 and f"{name}.tsv" in errors[0], err[-2000:]
            assert not out.exists()
        else:
            assert (out / "report.json").is_file()
