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


def test_cli_run_then_eval(tiny_classifier_dir, tmp_path, cache_dir, capsys):
    import yaml

    from lmdistill.cli import main

    config = sst2_config(tiny_classifier_dir, tmp_path / "run", cache_dir)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path), "--set", "recipe.temperature=3", "--set", "student.layers=[1, 3]"]) == 0
    out = capsys.readouterr().out
    assert "| teacher |" in out and "| student |" in out and "report (png):" in out
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["recipe"]["temperature"] == 3 and saved["student"]["layers"] == [1, 3]

    assert main(["eval", str(tmp_path / "run" / "student"), "--config", str(path)]) == 0
    entry = json.loads(capsys.readouterr().out)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert entry["metric"] == "accuracy"
    assert entry["score"] == pytest.approx(report["student"]["score"])
    assert entry["params"] == report["student"]["params"]
