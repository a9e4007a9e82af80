"""bench_long's tables come from the stored JSON alone: a student's seeds make one row (mean ± sample
std), and runs scored against different teachers are refused (one line) rather than averaged."""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_long  # noqa: E402


def record(seed: int, student: float, teacher: float = 0.5, kind: str = "token-classification") -> dict:
    scores = {"metric": "f1", "score": student, "f1": student, "exact_match": student / 2}
    return {"key": f"doc-kd-L3-lsg-s{seed}-e2",
            "config": {"task": {"kind": kind}, "student": {"attention": {"type": "lsg", "block_size": 128,
                                                                         "max_length": 4096}}},
            "report": {"teacher": {"metric": "f1", "score": teacher,
                                   "metrics": {"metric": "f1", "score": teacher, "exact_match": teacher / 2}},
                       "student": {"metric": "f1", "score": student, "metrics": scores},
                       "retention": student / teacher},
            "cost": {role: {"latency_ms_per_doc": ms, "docs": 3, "windows_per_doc": 1.0}
                     for role, ms in (("teacher", 100.0), ("student", 50.0 if seed else 25.0))}}


def test_seeds_of_one_student_make_one_row(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_long, "RESULTS", tmp_path)
    for seed, score in ((0, 0.40), (1, 0.30)):
        (tmp_path / f"doc-{seed}.json").write_text(json.dumps(record(seed, score)))
    bench_long.table(Namespace(markdown=None))
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| doc-kd-L3-lsg-e2 ")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    # seeds, f1 (%) mean ± std, retention (%), windows, median latency, median speed-up over the seeds
    assert cells[2:] == ["2", "35.00 ± 7.07", "70.00 ± 14.14", "1.0", "37.5", "3.00x"]


def test_runs_against_different_teachers_are_not_averaged(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_long, "RESULTS", tmp_path)
    (tmp_path / "a.json").write_text(json.dumps(record(0, 0.4)))
    (tmp_path / "b.json").write_text(json.dumps(record(1, 0.4, teacher=0.6)))
    with pytest.raises(SystemExit, match="different teachers"):
        bench_long.table(Namespace(markdown=None))


def test_question_answering_rows_show_exact_match_on_the_metric_scale(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_long, "RESULTS", tmp_path)
    (tmp_path / "a.json").write_text(json.dumps(record(0, 40.0, teacher=50.0, kind="question-answering")))
    bench_long.table(Namespace(markdown=None))
    out = capsys.readouterr().out.splitlines()
    assert "| exact match (%) |" in next(line for line in out if line.startswith("| model "))
    teacher = [c.strip() for c in next(line for line in out if line.startswith("| teacher ")).split("|")[1:-1]]
    student = [c.strip() for c in next(line for line in out if line.startswith("| doc-")).split("|")[1:-1]]
    assert teacher[3:5] == ["50.00", "25.00"] and student[3:6] == ["40.00", "20.00", "80.00"]
