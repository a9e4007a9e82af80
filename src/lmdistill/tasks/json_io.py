"""JSON data files: JSON lines (or a whole-file array of objects) and SQuAD v1.1 json.

Read with the checks of every data file (`io.read_text_file`); a line that is not JSON, NaN, a key
twice in one object, a line that is not an object, or a column that holds a list in one row and text
in another is a DataError naming the line.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from lmdistill.errors import DataError
from lmdistill.tasks.io import Split, read_text_file, split_lines


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _object(pairs: list[tuple]) -> dict:
    value = dict(pairs)
    if len(value) != len(pairs):  # json.loads would silently keep the last of two equal keys
        seen = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"the key {twice!r} appears twice in one object")
    return value


def _json_loads(text: str):
    """json.loads that refuses NaN/Infinity (not JSON) and an object with a key twice."""
    return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_object)


def _at(path: Path, place: int | str) -> str:
    return f"{path}:{place}" if isinstance(place, int) else f"{path} ({place})"


def _kind(value) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a scalar"


def _unify(values: list, places: list, name: str, path: Path) -> list:
    """Values of one column (or nested field) made storable in one Arrow column: scalars of mixed
    types (1, "1", 1.0) become their text ("1", "1", "1.0"), so that a task sees what the file says;
    a column holding a list in one row and text in another is an error naming both lines."""
    first: dict[str, int] = {}
    for i, v in enumerate(values):
        if v is not None:
            first.setdefault(_kind(v), i)
    if len(first) > 1:
        (kind_a, a), (kind_b, b) = sorted(first.items(), key=lambda item: item[1])[:2]
        raise DataError(f"{_at(path, places[b])}: '{name}' holds {kind_b} here but {kind_a} at "
                        f"{_at(path, places[a])}")
    kind = next(iter(first), None)
    if kind == "a scalar":
        if len({type(v) for v in values if v is not None}) > 1:
            return [None if v is None else str(v) for v in values]
        return values
    if kind == "a list":
        flat, flat_places, lengths = [], [], []
        for v, place in zip(values, places):
            items = v or []
            flat.extend(items)
            flat_places.extend([place] * len(items))
            lengths.append(None if v is None else len(items))
        flat = _unify(flat, flat_places, f"{name}[]", path)
        out, at = [], 0
        for n in lengths:
            out.append(None if n is None else flat[at:at + n])
            at += n or 0
        return out
    if kind == "an object":
        keys = list(dict.fromkeys(k for v in values if v is not None for k in v))
        fields = {k: _unify([None if v is None else v.get(k) for v in values], places, f"{name}.{k}", path)
                  for k in keys}
        return [None if v is None else {k: fields[k][i] for k in keys} for i, v in enumerate(values)]
    return values


def _table(rows: list[dict], places: list, path: Path) -> datasets.Dataset:
    names = list(dict.fromkeys(k for row in rows for k in row))
    columns = {name: _unify([row.get(name) for row in rows], places, name, path) for name in names}
    try:
        return datasets.Dataset.from_dict(columns)
    except Exception as err:  # pyarrow's many types; the values cannot share one column type
        raise DataError(f"{path}: cannot store the rows as a table ({str(err).splitlines()[0]})") from None


def read_jsonl(path: Path, text: str | None = None) -> Split:
    """One JSON object per line (blank lines ignored), or a whole-file JSON array of objects."""
    text = read_text_file(path) if text is None else text
    rows, places = [], []
    if text.lstrip().startswith("["):
        try:
            items = _json_loads(text)
        except ValueError as err:
            raise DataError(_json_error(path, err)) from None
        for i, item in enumerate(items if isinstance(items, list) else [items]):
            if not isinstance(item, dict):
                raise DataError(f"{path} (item {i + 1}): {_kind(item)}, not an object {{...}}")
            rows.append(item)
            places.append(f"item {i + 1}")
    else:
        for line_no, line in enumerate(split_lines(text), start=1):
            if not line.strip():
                continue
            try:
                item = _json_loads(line)
            except ValueError as err:
                raise DataError(_not_json_lines(path, text, line_no, err)) from None
            if not isinstance(item, dict):
                raise DataError(f"{path}:{line_no}: {_kind(item)}, not an object {{...}}; JSON lines hold one "
                                "object per line")
            rows.append(item)
            places.append(line_no)
    if not rows:
        raise DataError(f"{path}: the file is empty")
    data = _table(rows, places, path)
    return Split(data, str(path), places, "jsonl")


def _json_message(err: ValueError) -> str:
    return f"{err.msg}, column {err.colno}" if isinstance(err, json.JSONDecodeError) else str(err)


def _json_error(path: Path, err: ValueError) -> str:
    """A whole-file JSON error: the line is known for a syntax error, not for a duplicate key or NaN."""
    where = f"{path}:{err.lineno}" if isinstance(err, json.JSONDecodeError) else str(path)
    return f"{where}: not valid JSON ({_json_message(err)})"


def _not_json_lines(path: Path, text: str, line_no: int, err: ValueError) -> str:
    """The message for a line that is not JSON; names a whole-file JSON document when that is what it is."""
    if line_no == 1:
        try:
            whole = _json_loads(text)
        except ValueError:
            whole = None
        if isinstance(whole, dict):
            hint = "; set task.format: squad" if "data" in whole else ""
            return (f"{path}: one JSON object (keys: {', '.join(list(whole)[:5])}), not one object per line "
                    f"(JSON lines) or a JSON array of objects{hint}")
    return f"{path}:{line_no}: not valid JSON ({_json_message(err)})"


# ---- SQuAD -----------------------------------------------------------------------------------
def whole_number(value) -> int:
    """An answer_start as an int, or -1 when it is missing or not a whole number (the QA task then
    looks for the answer text in the context, and counts it)."""
    if isinstance(value, bool) or value is None:
        return -1
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return -1
    return int(number) if number.is_integer() else -1


def read_squad(path: Path, text: str | None = None) -> Split:
    """SQuAD v1.1 json -> rows of id, title, context, question, answers{text, answer_start}.

    A missing `data`/`paragraphs`/`context`/`qas`/`question`/`id` is a DataError naming the item's
    JSON path; a missing `answers` reads as no answer, a bad `answer_start` as -1 (the QA task
    decides about both). Row places are JSON paths such as `data[0].paragraphs[2].qas[1]`.
    """
    text = read_text_file(path) if text is None else text
    try:
        payload = _json_loads(text)
    except ValueError as err:
        raise DataError(_json_error(path, err)) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise DataError(f"{path}: SQuAD json needs a top-level object with a 'data' list of articles")

    def need(item, key, kind, place):
        value = item.get(key) if isinstance(item, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            got = "nothing" if value is None else type(value).__name__
            raise DataError(f"{path} ({place}): '{key}' must be {kind_name[kind]}, got {got}")
        return value

    kind_name = {list: "a list", str: "text", (str, int): "text or a number"}
    rows = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    places = []
    for a, article in enumerate(payload["data"]):
        paragraphs = need(article, "paragraphs", list, f"data[{a}]")
        for p, paragraph in enumerate(paragraphs):
            place_p = f"data[{a}].paragraphs[{p}]"
            context = need(paragraph, "context", str, place_p)
            for q, qa in enumerate(need(paragraph, "qas", list, place_p)):
                place = f"{place_p}.qas[{q}]"
                qid = str(need(qa, "id", (str, int), place))
                answers = qa.get("answers") if isinstance(qa, dict) else None
                if answers is not None and not isinstance(answers, list):
                    raise DataError(f"{path} ({place}): 'answers' must be a list, got {type(answers).__name__}")
                texts, starts = [], []
                for answer in answers or []:
                    answer = answer if isinstance(answer, dict) else {}
                    value = answer.get("text")
                    texts.append("" if value is None or isinstance(value, (list, dict)) else str(value))
                    starts.append(whole_number(answer.get("answer_start")))
                rows["id"].append(qid)
                rows["title"].append(str(article.get("title") or ""))
                rows["context"].append(context)
                rows["question"].append(need(qa, "question", str, place))
                rows["answers"].append({"text": texts, "answer_start": starts})
                places.append(f"{place}, id {qid}")
    return Split(datasets.Dataset.from_dict(rows), str(path), places, "squad")
