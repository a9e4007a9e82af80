"""The output folder: never delete what is not ours; --resume only under the config that made the run;
every check before anything is written.

Runs are cut short before their stage trains (run_stage replaced by a kill), so most tests cost no
training; one resumes to the end to check the report.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import DATA, sst2_config
from lmdistill.api import distill
from lmdistill.cli import main
from lmdistill.errors import ConfigError
from lmdistill.run_folder import MARKER, STAGE_RECORD, changed_keys, config_hash, prepare_output


class Killed(BaseException):
    pass


@pytest.fixture()
def killed_before_training(monkeypatch):
    """Replace run_stage with a kill: the run starts (marker, config.json, stage record) and dies."""
    import lmdistill.api

    def kill(*args, **kwargs):
        raise Killed()

    monkeypatch.setattr(lmdistill.api, "run_stage", kill)
    return monkeypatch


@pytest.fixture()
def config(tiny_classifier_dir, tmp_path, cache_dir):
    train = tmp_path / "train.tsv"  # a copy, so that a test may change it
    shutil.copy(DATA / "sst2" / "train.tsv", train)
    config = sst2_config(tiny_classifier_dir, tmp_path / "out", cache_dir)
    config["task"]["train"] = str(train)
    config["bench"]["enabled"] = False
    return config


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lmdistill: error:")]
    assert len(lines) == 1, err
    return lines[0]


def cli(config: dict, tmp_path: Path, *flags: str) -> int:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    return main(["run", str(path), *flags])


# ---- never delete what is not ours ------------------------------------------------------------------
def test_overwrite_refuses_a_user_folder(config, tmp_path, capsys):
    out = Path(config["output"])
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    assert cli(config, tmp_path, "--overwrite") == 2
    line = one_error_line(capsys)
    assert "was not made by lmdistill" in line and MARKER in line and str(out) in line
    assert (out / "thesis.tex").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_demo_refuses_a_user_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    assert main(["demo", "--output", str(out)]) == 2
    assert "was not made by lmdistill" in one_error_line(capsys)
    assert (out / "notes.txt").read_text() == "keep"


def test_output_dot_is_never_deleted(config, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "data.csv").write_text("a,b\n")
    monkeypatch.chdir(work)
    for output in (".", "..", str(work)):
        config["output"] = output
        assert cli(config, tmp_path, "--overwrite") == 2
        assert "lmdistill never deletes it" in one_error_line(capsys)
    # Even when it carries our marker (a run made with `output: .` in an empty folder).
    (work / MARKER).write_text(json.dumps({"format": 1, "config": {}}))
    config["output"] = "."
    assert cli(config, tmp_path, "--overwrite") == 2
    assert "lmdistill never deletes it" in one_error_line(capsys)
    assert (work / "data.csv").read_text() == "a,b\n"


def test_overwrite_refuses_a_symlink_and_a_file(config, tmp_path, capsys):
    target = tmp_path / "target"
    target.mkdir()
    (target / MARKER).write_text(json.dumps({"format": 1, "config": {}}))
    (target / "x").write_text("x")
    Path(config["output"]).symlink_to(target)
    assert cli(config, tmp_path, "--overwrite") == 2
    assert "symbolic link" in one_error_line(capsys)
    assert (target / "x").is_file()
    config["output"] = str(tmp_path / "a-file")
    (tmp_path / "a-file").write_text("x")
    assert cli(config, tmp_path, "--overwrite") == 2
    assert "is a file, not a folder" in one_error_line(capsys)


def test_an_empty_folder_is_used(config, killed_before_training):
    out = Path(config["output"])
    out.mkdir()
    with pytest.raises(Killed):
        distill(config)
    assert (out / MARKER).is_file() and (out / "config.json").is_file()


def test_overwrite_deletes_a_marked_folder(config, killed_before_training):
    out = Path(config["output"])
    with pytest.raises(Killed):
        distill(config)
    first = json.loads((out / MARKER).read_text())
    (out / "left-over.txt").write_text("ours: inside a run folder")
    config["training"]["learning_rate"] = 2e-3
    with pytest.raises(Killed):
        distill(config, overwrite=True)
    marker = json.loads((out / MARKER).read_text())
    assert not (out / "left-over.txt").exists()
    assert len(marker["runs"]) == 1 and marker["config"]["training"]["learning_rate"] == 2e-3
    assert marker["config_hash"] != first["config_hash"]


def test_prepare_output_deletes_only_after_the_check(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "own.txt").write_text("x")
    with pytest.raises(ConfigError, match="was not made by lmdistill"):
        prepare_output(out, True, {"a": 1}, {}, None, "0")
    assert (out / "own.txt").is_file()


# ---- resume only under the config that made the run ---------------------------------------------------
def test_resume_checks_the_recorded_config(config, tmp_path, killed_before_training, capsys):
    out = Path(config["output"])
    with pytest.raises(Killed):
        distill(config)
    record = json.loads((out / "stages" / "01-kd" / STAGE_RECORD).read_text())
    marker = json.loads((out / MARKER).read_text())
    assert record == {"stage": "kd", "config_hash": marker["config_hash"]}

    # A key that shapes the result: one line naming it, nothing written.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    changed = copy.deepcopy(config)
    changed["training"]["learning_rate"] = 2e-3
    changed["recipe"]["temperature"] = 3.0
    assert cli(changed, tmp_path, "--resume") == 2
    line = one_error_line(capsys)
    assert "recipe.temperature (2.0 -> 3.0)" in line and "training.learning_rate (0.001 -> 0.002)" in line
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    # The training data changed under the same name.
    train = Path(config["task"]["train"])
    original = train.read_text()
    train.write_text(original.replace("\t1\n", "\t0\n", 1))
    with pytest.raises(ConfigError, match="task.train: the file's content changed"):
        distill(config, resume=True)
    train.write_text(original)

    # A stage folder made under another config.
    path = out / "stages" / "01-kd" / STAGE_RECORD
    path.write_text(json.dumps({"stage": "kd", "config_hash": "0" * 64}))
    with pytest.raises(ConfigError, match="01-kd was trained under another config"):
        distill(config, resume=True)
    path.unlink()
    with pytest.raises(ConfigError, match=f"01-kd has no readable {STAGE_RECORD}"):
        distill(config, resume=True)
    path.write_text(json.dumps(record))

    # --resume and --overwrite together, and --resume of a folder that is not a run.
    with pytest.raises(ConfigError, match="give one of them"):
        distill(config, resume=True, overwrite=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an lmdistill run"):
        distill({**config, "output": str(other)}, resume=True)


def test_resume_with_keys_that_cannot_change_the_result(config, tmp_path, monkeypatch):
    import lmdistill.api

    real_run_stage = lmdistill.api.run_stage
    out = Path(config["output"])
    monkeypatch.setattr(lmdistill.api, "run_stage", lambda *a, **k: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        distill(config)
    monkeypatch.setattr(lmdistill.api, "run_stage", real_run_stage)
    started = json.loads((out / "config.json").read_text())

    resumed = copy.deepcopy(config)
    resumed["training"].update({"logging_steps": 3, "save_steps": 7, "eval_batch_size": 8, "num_threads": 1})
    resumed["bench"]["repeats"] = 5
    result = distill(resumed, resume=True)
    report = json.loads((out / "report.json").read_text())
    assert report["runs"][0]["resumed"] is False and report["runs"][1]["resumed"] is True
    assert report["runs"][1]["changed"] == {
        "bench.repeats": [2, 5], "training.eval_batch_size": [64, 8], "training.logging_steps": [1, 3],
        "training.num_threads": [None, 1], "training.save_steps": [500, 7]}
    # The report holds the config this process ran with; config.json the one the run started with.
    assert report["config"]["training"]["logging_steps"] == 3 and started["training"]["logging_steps"] == 1
    assert json.loads((out / "config.json").read_text()) == started
    assert {k: v for k, v in changed_keys(started, report["config"]).items()} == report["runs"][1]["changed"]
    assert report["config_hash"] == config_hash(started) == config_hash(report["config"])
    assert result.report["stages"][0]["steps"] == 4  # 64 rows / 16: the stage ran once, after the resume


# ---- every check before anything is written --------------------------------------------------------
def test_bench_length_beyond_the_positions_fails_before_writing(config, capsys, tmp_path):
    config["bench"].update({"enabled": True, "seq_len": 500})  # the tiny BERT has 128 positions
    assert cli(config, tmp_path) == 2
    assert "bench.seq_len: 500 tokens is more than the teacher's 128 positions" in one_error_line(capsys)
    assert not Path(config["output"]).exists()


def test_training_arguments_are_built_before_writing(config, monkeypatch):
    import lmdistill.api

    def rejects(*args, **kwargs):
        raise ValueError("--some_flag is not supported here\nmore detail")

    monkeypatch.setattr(lmdistill.api, "training_arguments", rejects)
    with pytest.raises(ConfigError, match="^training: transformers rejects the settings of stage 'kd': --some_flag"):
        distill(config)
    assert not Path(config["output"]).exists()


def test_data_too_short_for_one_block_fails_before_writing(tiny_llama_dir, tmp_path, cache_dir):
    text = tmp_path / "tiny.txt"
    text.write_text("a few words only\n")
    config = sst2_config(tiny_llama_dir, tmp_path / "out", cache_dir)
    config["task"] = {"kind": "language-modeling", "train": str(text), "eval": str(text), "block_size": 64}
    config["student"] = {"layers": [0, 1]}
    with pytest.raises(Exception, match="fewer than one block"):
        distill(config)
    assert not (tmp_path / "out").exists()


def test_output_and_cache_that_cannot_be_created(config, tiny_bert_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    config["output"] = str(blocker / "run")
    assert cli(config, tmp_path) == 2
    assert f"output: {blocker} is a file, so {blocker / 'run'} cannot be created" in one_error_line(capsys)
    # The teacher without a task head is fine-tuned and cached: the cache folder is checked first.
    config.update(output=str(tmp_path / "out"), cache_dir=str(blocker / "cache"),
                  teacher={"path": str(tiny_bert_dir), "epochs": 1})
    assert cli(config, tmp_path) == 2
    assert f"cache_dir: {blocker / 'cache'} is not writable" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()
