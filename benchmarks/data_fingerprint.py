"""Row counts and a SHA-256 of the rows every shipped data file loads to, so that a change to the
readers can be checked to leave them exactly as they were.

Two views: each file under data/ through `tasks.io.load_rows` (`.txt` both as text and as CoNLL),
and each real task through `build_task` (the rows a run uses, after the task's checks and skips).
Run it with two source trees and compare the JSON:

    PYTHONPATH=/work/main/src python benchmarks/data_fingerprint.py > before.json
    PYTHONPATH=src python benchmarks/data_fingerprint.py > after.json
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"

TASKS = {
    "sst2 dev": dict(kind="classification", train="sst2/train.tsv", eval="sst2/dev.tsv", text="sentence", label="label"),
    "sst2 test": dict(kind="classification", train="sst2/train.tsv", eval="sst2/test.tsv", text="sentence",
                      label="label"),
    "trec coarse": dict(kind="classification", train="trec/train.tsv", eval="trec/test.tsv", text="question",
                        label="label_coarse"),
    "trec fine": dict(kind="classification", train="trec/train.tsv", eval="trec/test.tsv", text="question",
                      label="label_fine"),
    "wikiann dev": dict(kind="token-classification", train="wikiann_en/train.txt", eval="wikiann_en/dev.txt"),
    "wikiann test": dict(kind="token-classification", train="wikiann_en/train.txt", eval="wikiann_en/test.txt"),
    "squad": dict(kind="question-answering", train="squad_v1.1/train-v1.1.University_of_Notre_Dame.json",
                  eval="squad_v1.1/dev-v1.1.Super_Bowl_50.json"),
    "wikitext": dict(kind="language-modeling", train="wikitext2/train.txt", eval="wikitext2/eval.txt"),
    "wikitext raw": dict(kind="language-modeling", train="wikitext2/wiki.test.raw", eval="wikitext2/eval.txt"),
}


def digest(dataset) -> dict:
    h = hashlib.sha256()
    for row in dataset:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    return {"rows": len(dataset), "columns": dataset.column_names, "sha256": h.hexdigest()}


def main() -> None:
    from lmdistill.config import TaskConfig
    from lmdistill.errors import DataError
    from lmdistill.tasks import build_task
    from lmdistill.tasks.io import load_split

    files = {}
    for path in sorted(DATA.rglob("*")):
        if not path.is_file() or path.suffix == ".md" or path.name == "vocab.json":
            continue
        for text_format in ("text", "conll") if path.suffix == ".txt" else ("text",):
            name = f"{path.relative_to(REPO)} [{text_format}]"
            try:
                files[name] = digest(load_split(str(path), "task.train", text_format=text_format))
            except DataError as err:
                files[name] = f"DataError: {str(err).replace(str(REPO), 'REPO')}"
    tasks = {}
    for name, keys in TASKS.items():
        keys = dict(keys, train=str(DATA / keys["train"]), eval=str(DATA / keys["eval"]))
        task = build_task(TaskConfig(**keys))
        tasks[name] = {"train": digest(task.raw_train), "eval": digest(task.raw_eval),
                       "labels": getattr(task, "labels", None)}
    json.dump({"files": files, "tasks": tasks}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
