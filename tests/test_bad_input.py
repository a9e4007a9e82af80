"""Each bad input gives one clear line (exit status 2 from the CLI), no traceback, no partial output."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from conftest import sst2_config
from lmdistill.api import distill
from lmdistill.cli import main
from lmdistill.errors import DataError, TrainingError


def run_cli(config: dict, tmp_path, capsys, extra=()):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["run", str(path), *extra])
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("lmdistill: error:")]
    assert len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture()
def base(tiny_bert_dir, tmp_path, cache_dir):
    return sst2_config(tiny_bert_dir, tmp_path / "out", cache_dir)


def test_missing_file(base, tmp_path, capsys):
    base["task"]["train"] = str(tmp_path / "nope.tsv")
    code, err = run_cli(base, tmp_path, capsys)
    assert_one_line_error(code, err, "task.train: file not found:", "nope.tsv")
    assert not (tmp_path / "out").exists()


def test_unknown_key(base, tmp_path, capsys):
    base["recipe"]["temprature"] = 2.0
    code, err = run_cli(base, tmp_path, capsys)
    assert_one_line_error(code, err, "recipe.temprature: unknown key")


def test_unknown_recipe(base, tmp_path, capsys):
    base["recipe"] = {"name": "distil-magic"}
    code, err = run_cli(base, tmp_path, capsys)
    assert_one_line_error(code, err, "unknown recipe 'distil-magic'")


def test_missing_label_column(base, tmp_path, capsys):
    base["task"]["label"] = "sentiment"
    code, err = run_cli(base, tmp_path, capsys)
    assert_one_line_error(code, err, "no column 'sentiment'", "columns: sentence, label", "task.label")
    assert not (tmp_path / "out").exists()


def test_eval_label_unseen_in_train(base, tmp_path, capsys):
    eval_file = tmp_path / "dev.tsv"
    eval_file.write_text("sentence\tlabel\na fine film .\t1\nodd one .\t7\n")
    base["task"]["eval"] = str(eval_file)
    code, err = run_cli(base, tmp_path, capsys)
    assert_one_line_error(code, err, "label '7'", "never appears in train")


def test_layer_map_out_of_range(base, tmp_path, capsys):
    base["recipe"] = {"name": "lwd", "layer_map": [[1, 1], [2, 13]]}
    code, err = run_cli(base, tmp_path, capsys)
    assert_one_line_error(code, err, "layer map: student layer 2 -> teacher layer 13, but the teacher has 4 layers")
    assert not (tmp_path / "out").exists()


def test_student_layer_out_of_range(base, tmp_path, capsys):
    base["student"] = {"layers": [0, 9]}
    code, err = run_cli(base, tmp_path, capsys)
    assert_one_line_error(code, err, "student.layers: layer 9 is out of range; the teacher has 4 layers")


def test_width_mismatch_without_projection(base, tmp_path, capsys):
    base["student"] = {"config": {"hidden_size": 16, "num_hidden_layers": 2, "intermediate_size": 32}}
    base["recipe"] = {"name": "lwd", "projection": False}
    code, err = run_cli(base, tmp_path, capsys)
    assert_one_line_error(code, err, "recipe.projection: student hidden size 16 != teacher hidden size 32")


def test_vocabulary_mismatch(base, tmp_path, capsys, tiny_llama_dir):
    base["student"] = {"path": str(tiny_llama_dir)}
    base["recipe"] = {"name": "lwd"}
    code, err = run_cli(base, tmp_path, capsys)
    assert_one_line_error(code, err, "vocabulary (50257 tokens) differs from the teacher's (30522 tokens)",
                          "token by token")


def test_empty_dataset(base, tmp_path, capsys):
    empty = tmp_path / "empty.tsv"
    empty.write_text("sentence\tlabel\n")
    base["task"]["train"] = str(empty)
    code, err = run_cli(base, tmp_path, capsys)
    assert_one_line_error(code, err, "task.train:", "has no rows")
    empty.write_text("")
    code, err = run_cli(base, tmp_path, capsys)
    assert_one_line_error(code, err, "empty")


def test_output_exists_without_resume(base, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, err = run_cli(base, tmp_path, capsys)
    assert_one_line_error(code, err, "already exists", "--resume")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_offline_hub_dataset_is_a_clear_error(base):
    base["task"]["train"] = "hub:stanfordnlp/sst2@train"
    with pytest.raises(DataError, match="cannot load hub dataset 'stanfordnlp/sst2' split 'train'"):
        distill(base)


def test_long_sequences_are_truncated_with_a_warning(base, tmp_path, caplog):
    long_file = tmp_path / "long.tsv"
    rows = ["sentence\tlabel"] + [(" ".join(["very"] * 300) + f" good {i} .\t{i % 2}") for i in range(16)]
    long_file.write_text("\n".join(rows) + "\n")
    base["task"].update({"train": str(long_file), "max_length": 1000})  # the tiny BERT has 128 positions
    with caplog.at_level(logging.WARNING, logger="lmdistill"):
        result = distill(base)
    text = caplog.text
    assert "longer than the model's 128 positions" in text
    assert "were truncated" in text
    assert result.report["student"]["score"] >= 0


def test_nan_loss_names_the_step(base, monkeypatch):
    from lmdistill.recipes import kd

    calls = {"n": 0}
    original = kd.kd_terms

    def poisoned(task, settings, student, teacher):
        calls["n"] += 1
        total, logs = original(task, settings, student, teacher)
        return (total * float("nan") if calls["n"] == 3 else total), logs

    monkeypatch.setattr(kd, "kd_terms", poisoned)
    with pytest.raises(TrainingError, match=r"stage 'kd': the loss is nan at step 3; lower training.learning_rate"):
        distill(base)
    assert not (Path(base["output"]) / "student").exists()
