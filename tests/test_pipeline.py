"""End-to-end runs of the pipeline on a tiny BERT and real SST-2 slices."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import sst2_config
from lmdistill.api import distill

REPORT_KEYS = {"metric", "score", "params", "latency_ms", "peak_mem_mb"}


@pytest.mark.parametrize("recipe", [
    {"name": "finetune"},
    {"name": "kd", "temperature": 2.0, "alpha": 0.5},
    {"name": "lwd", "layer_map": "uniform", "beta": 1.0},
])
def test_recipe_end_to_end(recipe, tiny_bert_dir, tmp_path, cache_dir):
    out = tmp_path / "run"
    result = distill(sst2_config(tiny_bert_dir, out, cache_dir, recipe=recipe))
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "classification" and report["recipe"] == recipe["name"]
    for role in ("teacher", "student"):
        assert REPORT_KEYS <= set(report[role])
        assert set(report[role]["latency_ms"]) == {"batch1", "batch4"}
        assert 0.0 <= report[role]["score"] <= 1.0
    assert report["student"]["params"] < report["teacher"]["params"]
    assert report["retention"] == pytest.approx(report["student"]["score"] / report["teacher"]["score"], abs=1e-3)
    assert (out / "report.md").read_text().startswith("# lmdistill report")
    assert (out / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    assert result.student_dir == out / "student"
    # The student is a plain HF folder: it loads without lmdistill.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(out / "student")
    tokenizer = AutoTokenizer.from_pretrained(out / "student")
    assert model.config.num_hidden_layers == 2
    logits = model(**tokenizer(["a fine film ."], return_tensors="pt")).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
