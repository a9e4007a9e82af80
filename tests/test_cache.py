"""Teacher-output cache and the lean training step: the cached run trains like the live one, the cache is
reused when nothing changed and rebuilt when any keyed input did, top-k KL matches a hand computation,
and a stage asks each network for exactly what it declared."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import DATA, sst2_config
from lmdistill.api import distill, fill_cache
from lmdistill.cache import CachedTeacherOutputs
from lmdistill.cli import main
from lmdistill.losses import kd_kl, topk_kd_kl
from lmdistill.models.features import TopKLogits


def curve(result, stage=0):
    return [loss for _, loss in result.report["stages"][stage]["loss_curve"]]


def lwd_config(teacher, output, cache, **training):
    config = sst2_config(teacher, output, cache, recipe={"name": "lwd", "beta": 1.0, "temperature": 2.0})
    config["training"].update({"epochs": 2, **training})
    config["bench"]["enabled"] = False
    return config


def test_cached_run_trains_like_the_live_one(tiny_classifier_dir, tmp_path):
    live = distill(lwd_config(tiny_classifier_dir, tmp_path / "live", tmp_path / "cache", cache_teacher=False))
    assert "teacher_cache" not in live.report["stages"][0]
    cold = distill(lwd_config(tiny_classifier_dir, tmp_path / "cold", tmp_path / "cache", cache_dtype="float32"))
    warm = distill(lwd_config(tiny_classifier_dir, tmp_path / "warm", tmp_path / "cache", cache_dtype="float32"))
    half = distill(lwd_config(tiny_classifier_dir, tmp_path / "half", tmp_path / "cache"))  # float16, the default
    assert cold.report["stages"][0]["teacher_cache"]["status"] == "built"
    assert warm.report["stages"][0]["teacher_cache"]["status"] == "reused"
    assert half.report["stages"][0]["teacher_cache"]["status"] == "extended"  # same entry, new fields
    assert set(cold.report["stages"][0]["teacher_cache"]["fields"]) == {
        "logits-float32", "hidden2-float32", "hidden4-float32"}  # the 2-layer student maps to teacher layers 2, 4
    # fp32 storage: the same losses as the live teacher (to float rounding of other batch shapes);
    # fp16 storage: within fp16 tolerance.
    assert np.allclose(curve(cold), curve(live), rtol=1e-6, atol=1e-7)
    assert curve(warm) == curve(cold)
    assert np.allclose(curve(half), curve(live), rtol=1e-3, atol=1e-4)
    assert len(curve(live)) == 8


def test_fp32_cache_stores_the_teachers_outputs_exactly(tiny_classifier_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    config = lwd_config(tiny_classifier_dir, tmp_path / "out", tmp_path / "cache", cache_dtype="float32",
                        eval_batch_size=1)  # the pass then runs each example alone, as we do below
    info = fill_cache(config)[0]
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir).eval()
    from lmdistill.config import load_config
    from lmdistill.tasks import build_task

    task = build_task(load_config(config).task)
    from transformers import AutoTokenizer

    dataset = task.train_dataset(AutoTokenizer.from_pretrained(tiny_classifier_dir), teacher.config)
    reader = CachedTeacherOutputs(Path(info["folder"]), info["fields"], 4, None)
    rows = [5, 0, 17, 63]
    batch = task.collator(AutoTokenizer.from_pretrained(tiny_classifier_dir))(
        [{k: dataset[i][k] for k in ("input_ids", "attention_mask", "token_type_ids")} for i in rows])
    cached = reader.features(torch.tensor(rows), batch)
    for b, i in enumerate(rows):
        alone = {k: torch.tensor([dataset[i][k]]) for k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.no_grad():
            out = teacher(**alone, output_hidden_states=True)
        assert torch.equal(cached.logits[b], out.logits[0])
        length = len(dataset[i]["input_ids"])
        for layer in (2, 4):
            assert torch.equal(cached.hidden_states[layer][b, :length], out.hidden_states[layer][0])
            assert (cached.hidden_states[layer][b, length:] == 0).all()  # padding stays empty
        assert cached.hidden_states[1] is None and cached.hidden_states[3] is None  # only declared layers


def test_every_keyed_input_misses_the_cache(tiny_classifier_dir, tmp_path):
    cache = tmp_path / "cache"
    base = lwd_config(tiny_classifier_dir, tmp_path / "out", cache)
    first = fill_cache(base)[0]
    assert first["status"] == "built"
    assert fill_cache(base)[0]["status"] == "reused"
    assert fill_cache(base)[0]["folder"] == first["folder"]

    # Other teacher weights (one value changed).
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other-teacher"
    shutil.copytree(tiny_classifier_dir, other)
    weights = load_file(str(other / "model.safetensors"))
    name = next(k for k in weights if k.endswith("classifier.weight"))
    weights[name][0, 0] += 1e-3
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    changed = dict(base, teacher=dict(base["teacher"], path=str(other)))
    assert fill_cache(changed)[0]["folder"] != first["folder"]

    # Another tokenizer (two WordPiece entries swapped: same weights, other token ids).
    swapped = tmp_path / "swapped-tokenizer"
    shutil.copytree(tiny_classifier_dir, swapped)
    spec = json.loads((swapped / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["the"], vocab["a"] = vocab["a"], vocab["the"]
    (swapped / "tokenizer.json").write_text(json.dumps(spec))
    changed = dict(base, teacher=dict(base["teacher"], path=str(swapped)))
    assert fill_cache(changed)[0]["folder"] != first["folder"]

    # Other data, another max length.
    changed = json.loads(json.dumps(base))
    changed["task"]["max_train_samples"] = 48
    assert fill_cache(changed)[0]["folder"] != first["folder"]
    changed = json.loads(json.dumps(base))
    changed["task"]["max_length"] = 16
    assert fill_cache(changed)[0]["folder"] != first["folder"]

    # What is stored: another dtype adds fields to the same entry, never reads the old ones.
    changed = json.loads(json.dumps(base))
    changed["training"]["cache_dtype"] = "float32"
    entry = fill_cache(changed)[0]
    assert entry["status"] == "extended" and entry["folder"] == first["folder"]
    assert all(f.endswith("float32") for f in entry["fields"])
    # Nothing but the cache was written: no output folder.
    assert not (tmp_path / "out").exists()


def test_topk_kl_equals_a_hand_computation():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 7), torch.randn(5, 7) * 3
    for temperature in (1.0, 2.5):
        k = 3
        top = teacher.topk(k, dim=-1)
        tail = (teacher / temperature).scatter(-1, top.indices, float("-inf")).logsumexp(-1)
        sparse = TopKLogits(top.values, top.indices, tail, temperature)
        got = topk_kd_kl(student, sparse, temperature)
        # By hand: both distributions coarsened to the teacher's top-k tokens plus one bucket for the rest.
        p = np.exp(teacher.numpy() / temperature)
        p /= p.sum(-1, keepdims=True)
        q = np.exp(student.numpy() / temperature)
        q /= q.sum(-1, keepdims=True)
        expected = []
        for row in range(5):
            ids = top.indices[row].numpy()
            rest = np.setdiff1d(np.arange(7), ids)
            pb = np.append(p[row, ids], p[row, rest].sum())
            qb = np.append(q[row, ids], q[row, rest].sum())
            expected.append((pb * np.log(pb / qb)).sum())
        assert got.item() == pytest.approx(np.mean(expected) * temperature**2, rel=1e-5)
        assert got.item() <= kd_kl(student, teacher, temperature).item() + 1e-6  # coarsening lowers the KL
        # With k = V the tail is empty and the KL is the full one; kd_kl dispatches on TopKLogits.
        full = teacher.topk(7, dim=-1)
        empty = TopKLogits(full.values, full.indices, torch.full((5,), float("-inf")), temperature)
        assert kd_kl(student, empty, temperature).item() == pytest.approx(kd_kl(student, teacher, temperature).item(),
                                                                          rel=1e-5)


def test_causal_lm_cache_keeps_topk_and_the_tail(tiny_llama_dir, tmp_path):
    config = {
        "teacher": {"path": str(tiny_llama_dir)},
        "student": {"layers": [0, 2]},
        "task": {"kind": "language-modeling", "train": str(DATA / "wikitext2" / "train.txt"),
                 "eval": str(DATA / "wikitext2" / "eval.txt"), "block_size": 32,
                 "max_train_samples": 40, "max_eval_samples": 10},
        "recipe": {"name": "kd", "temperature": 2.0, "alpha": 0.5},
        "training": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1, "seed": 0,
                     "cache_top_k": 16, "cache_top_k_max_temperature": 2.0},
        "bench": {"enabled": False},
        "output": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"),
    }
    cached = distill(config)
    info = cached.report["stages"][0]["teacher_cache"]
    assert info["fields"] == ["topk16-T2-float16"]
    live = distill(dict(config, output=str(tmp_path / "live"),
                        training=dict(config["training"], cache_teacher=False)))
    # Step 1 sees the same student in both runs: the tail-bucket KL is a lower bound of the full KL.
    first_cached = cached.report["stages"][0]["loss_curve"][0][1]
    first_live = live.report["stages"][0]["loss_curve"][0][1]
    assert first_cached <= first_live + 1e-5
    assert np.isfinite(curve(cached)).all()


def spy_forward_kwargs(model, calls: list):
    original = model.forward

    def forward(*args, **kwargs):
        calls.append({k: kwargs.get(k) for k in ("output_hidden_states", "output_attentions")})
        return original(*args, **kwargs)

    model.forward = forward


@pytest.mark.parametrize("recipe,hidden", [({"name": "kd"}, False), ({"name": "lwd"}, True)])
def test_stage_asks_each_network_for_what_it_declares(tiny_classifier_dir, tmp_path, monkeypatch, recipe, hidden):
    from lmdistill import trainer as trainer_module

    calls = {"student": [], "teacher": []}
    original_init = trainer_module.DistillationTrainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        spy_forward_kwargs(self.model.net, calls["student"])
        if self.teacher is not None:
            spy_forward_kwargs(self.teacher, calls["teacher"])

    monkeypatch.setattr(trainer_module.DistillationTrainer, "__init__", init)
    config = sst2_config(tiny_classifier_dir, tmp_path / "out", tmp_path / "cache", recipe=recipe)
    config["training"]["cache_teacher"] = False
    config["bench"]["enabled"] = False
    distill(config)
    assert calls["student"] and calls["teacher"]
    # Training calls ask for exactly the declared outputs; evaluation calls (no flags) ask for nothing.
    training_calls = [c for c in calls["student"] + calls["teacher"] if c["output_hidden_states"] is not None]
    assert len(training_calls) >= 8
    for call in training_calls:
        assert call == {"output_hidden_states": hidden, "output_attentions": False}
    assert all(not c["output_attentions"] for c in calls["student"] + calls["teacher"])


def test_non_finite_loss_names_the_step_range(tiny_classifier_dir, tmp_path, monkeypatch):
    from lmdistill.errors import TrainingError
    from lmdistill.recipes import kd

    calls = {"n": 0}
    original = kd.kd_terms

    def poisoned(task, settings, student, teacher):
        calls["n"] += 1
        total, logs = original(task, settings, student, teacher)
        return (total * float("inf") if calls["n"] == 6 else total), logs

    monkeypatch.setattr(kd, "kd_terms", poisoned)
    config = sst2_config(tiny_classifier_dir, tmp_path / "out", tmp_path / "cache")
    config["training"].update({"logging_steps": 4, "batch_size": 8})  # 8 steps, logged at 4 and 8
    with pytest.raises(TrainingError, match=r"stage 'kd': the loss is (inf|nan) between steps 5 and 8"):
        distill(config)


def run_cli(config: dict, tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["run", str(path)])
    return code, capsys.readouterr().err


def test_unwritable_cache_folder_is_one_clear_line(tiny_classifier_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = sst2_config(tiny_classifier_dir, tmp_path / "out", blocker / "cache")
    code, err = run_cli(config, tmp_path, capsys)
    assert code == 2 and "Traceback" not in err
    assert f"lmdistill: error: cache_dir: {blocker / 'cache'} is not writable" in err
    assert not (tmp_path / "out").exists()


def test_vocabulary_logits_above_the_temperature_bound_run_live(tiny_llama_dir, tmp_path, caplog):
    config = {
        "teacher": {"path": str(tiny_llama_dir)}, "student": {"layers": [0, 2]},
        "task": {"kind": "language-modeling", "train": str(DATA / "wikitext2" / "train.txt"),
                 "eval": str(DATA / "wikitext2" / "eval.txt"), "block_size": 32, "max_train_samples": 20,
                 "max_eval_samples": 5},
        "recipe": {"name": "kd", "temperature": 2.0}, "training": {"batch_size": 4, "epochs": 1},
        "bench": {"enabled": False}, "output": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
    }
    with caplog.at_level(logging.INFO, logger="lmdistill"):
        result = distill(config)  # the default bound is T 1
    assert "teacher_cache" not in result.report["stages"][0]
    assert "the teacher runs live (its vocabulary logits are read at temperature 2" in caplog.text


def test_top_k_larger_than_the_vocabulary(tiny_llama_dir, tmp_path, capsys):
    config = {
        "teacher": {"path": str(tiny_llama_dir)}, "student": {"layers": [0, 2]},
        "task": {"kind": "language-modeling", "train": str(DATA / "wikitext2" / "train.txt"),
                 "eval": str(DATA / "wikitext2" / "eval.txt"), "block_size": 32, "max_train_samples": 40},
        "recipe": {"name": "kd"}, "training": {"cache_top_k": 60000},
        "output": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
    }
    code, err = run_cli(config, tmp_path, capsys)
    assert code == 2 and "Traceback" not in err
    assert "lmdistill: error: training.cache_top_k: 60000 is larger than the teacher's vocabulary (50257 tokens)" in err
    assert not (tmp_path / "out").exists()


def test_cache_command_fills_without_training(tiny_classifier_dir, tmp_path, capsys, caplog):
    config = lwd_config(tiny_classifier_dir, tmp_path / "out", tmp_path / "cache")
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["cache", str(path)]) == 0
    out = capsys.readouterr().out
    assert "stage lwd: built" in out and "hidden2-float16" in out
    assert not (tmp_path / "out").exists()
    with caplog.at_level(logging.INFO, logger="lmdistill"):
        result = distill(config)
    assert result.report["stages"][0]["teacher_cache"]["status"] == "reused"
    assert "teacher-output cache reused" in caplog.text
