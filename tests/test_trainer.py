"""Trainer guarantees: the teacher never trains, killed runs resume, torchrun (gloo) matches one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, sst2_config
from lmdistill.api import distill
from lmdistill.trainer import DistillationTrainer


def state_copy(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_teacher_is_frozen_and_unchanged(tiny_classifier_dir, tmp_path, cache_dir, monkeypatch):
    seen = {}
    original_init = DistillationTrainer.__init__

    def spy_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        seen["trainer"] = self
        seen["before"] = state_copy(self.teacher)

    monkeypatch.setattr(DistillationTrainer, "__init__", spy_init)
    config = sst2_config(tiny_classifier_dir, tmp_path / "out", cache_dir,
                         recipe={"name": "lwd", "layer_map": "uniform", "beta": 1.0})
    distill(config)
    trainer = seen["trainer"]
    teacher = trainer.teacher
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, seen["before"][name]), name
    # ...and the student did train (otherwise the test would prove nothing).
    student = trainer.accelerator.unwrap_model(trainer.model).net
    assert trainer.state.global_step > 0
    assert any(p.grad is not None or p.requires_grad for p in student.parameters())


def test_killed_run_resumes_from_last_checkpoint(tiny_classifier_dir, tmp_path, cache_dir, monkeypatch):
    config = sst2_config(tiny_classifier_dir, tmp_path / "out", cache_dir)
    config["training"].update({"save_steps": 2, "batch_size": 8})  # 64 rows / 8 = 8 steps
    original = DistillationTrainer.compute_loss

    def dies_at_step_5(self, model, inputs, *args, **kwargs):
        if self.state.global_step == 5:
            raise KeyboardInterrupt
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "compute_loss", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        distill(config)
    stage_dir = tmp_path / "out" / "stages" / "01-kd"
    assert (stage_dir / "checkpoint-4").is_dir() and not (stage_dir / "done.json").exists()
    assert not (tmp_path / "out" / "student").exists()  # nothing that looks loadable

    monkeypatch.setattr(DistillationTrainer, "compute_loss", original)
    steps_run = []

    def counting(self, model, inputs, *args, **kwargs):
        steps_run.append(self.state.global_step)
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "compute_loss", counting)
    result = distill(config, resume=True)
    assert steps_run == [4, 5, 6, 7]  # continued after checkpoint-4, did not start over
    assert json.loads((stage_dir / "done.json").read_text())["steps"] == 8
    assert result.report["student"]["score"] >= 0

    # A finished stage is not run again.
    steps_run.clear()
    distill(config, resume=True)
    assert steps_run == []

    # ...and the resumed student is the one an uninterrupted run gives, bit for bit.
    monkeypatch.setattr(DistillationTrainer, "compute_loss", original)
    uninterrupted = distill({**config, "output": str(tmp_path / "uninterrupted")})
    expected = load_file(str(uninterrupted.student_dir / "model.safetensors"))
    resumed = load_file(str(result.student_dir / "model.safetensors"))
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    assert result.report["stages"][0]["loss_curve"] == uninterrupted.report["stages"][0]["loss_curve"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gloo on CPU, tested on Linux")
def test_torchrun_two_processes_matches_one(tiny_classifier_dir, tmp_path):
    def config_for(name):
        config = sst2_config(tiny_classifier_dir, tmp_path / name, tmp_path / "cache")
        config["task"]["max_train_samples"] = 96
        config["training"].update({"batch_size": 16, "group_by_length": False, "epochs": 1, "logging_steps": 1})
        config["bench"]["enabled"] = False
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(config))
        return path

    # The gloo-on-CPU path, also on a GPU machine (two ranks on one GPU is not a NCCL setup).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests"), "CUDA_VISIBLE_DEVICES": ""}
    worker = str(REPO / "tests" / "ddp_worker.py")
    subprocess.run([sys.executable, worker, str(config_for("single"))], check=True, env=env, timeout=600)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    "29517", worker, str(config_for("ddp"))], check=True, env=env, timeout=600)

    def curve(name):
        return json.loads((tmp_path / name / "stages" / "01-kd" / "done.json").read_text())["loss_curve"]

    single, ddp = curve("single"), curve("ddp")
    assert [s for s, _ in single] == [s for s, _ in ddp] == list(range(1, 7))
    for (_, a), (_, b) in zip(single, ddp):
        assert b == pytest.approx(a, rel=2e-3, abs=2e-4)
    students = [p for p in (tmp_path / "ddp").rglob("config.json") if p.parent.name == "student"]
    assert students == [tmp_path / "ddp" / "student" / "config.json"]
    assert not list((tmp_path / "ddp").glob(".tmp-*"))
