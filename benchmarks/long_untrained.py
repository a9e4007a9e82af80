"""Score a bench_long student as converted, before any training: the same teacher layers, attention
and positions as a stored run (benchmarks/results/long/<key>.json), built by lmdistill from the run's
cached fine-tuned teacher, saved, and scored with `lmdistill eval`'s code on the run's evaluation set.
It tells whether a run's training helped or hurt the conversion it started from.

    .venv/bin/python benchmarks/long_untrained.py benchmarks/results/long/<key>.json

Prints the scores and adds them to benchmarks/results/long-untrained.json under the run's key.
Needs the run's teacher in the teacher cache (the run made it) and its data files (runs/bench-long/data).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
OUT = REPO / "benchmarks" / "results" / "long-untrained.json"


def main(argv: list[str]) -> int:
    from transformers import AutoConfig

    from lmdistill.api import evaluate_model
    from lmdistill.config import load_config
    from lmdistill.models.students import build_student
    from lmdistill.models.teacher import load_model, load_tokenizer
    from lmdistill.tasks import build_task

    if len(argv) != 1 or not Path(argv[0]).is_file():
        sys.exit("long_untrained: give one stored run, benchmarks/results/long/<key>.json")
    record = json.loads(Path(argv[0]).read_text())
    teacher_dir = record["report"]["teacher_info"].get("cache_dir")
    if not teacher_dir or not Path(teacher_dir).is_dir():
        sys.exit(f"long_untrained: {argv[0]}: its fine-tuned teacher is not in the cache ({teacher_dir}); rerun it")
    config = load_config({**record["config"], "bench": {"enabled": False}})
    task = build_task(config.task)
    tokenizer = load_tokenizer(teacher_dir)
    task.bind(AutoConfig.from_pretrained(teacher_dir))
    task.bind_tokenizer(tokenizer)
    teacher = load_model(task.auto_class(), teacher_dir, {})[0]
    student, description = build_student(config.student, teacher, None, task.auto_class(), task.model_kwargs(),
                                         False, tokenizer)
    with tempfile.TemporaryDirectory() as folder:
        student.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        entry = evaluate_model(folder, config)
    metrics = entry.get("metrics", entry)
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    results[record["key"]] = {"student": description, "metrics": metrics,
                              "trained_score": record["report"]["student"]["score"]}
    OUT.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"{record['key']}: untrained {json.dumps(metrics)}; trained {record['report']['student']['score']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
