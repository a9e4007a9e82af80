"""TED (task-aware layer-wise distillation): stage invariants, build-time checks, every task kind,
resume. Tiny 4-layer, 32-wide BERT teacher; the student keeps layers [0, 2]; student filter interval 1
and teacher filter interval 2 give two filters each (student hidden states 1, 2; teacher 2, 4)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from conftest import DATA, sst2_config
from lmdistill import ConfigError
from lmdistill.api import distill
from lmdistill.config import load_config
from lmdistill.recipes.ted import TEDRecipe, filter_positions, head_loss, make_filter, qa_loss

TED = {"name": "ted", "student_filter_interval": 1, "teacher_filter_interval": 2}
STAGES = ["teacher-filters", "student-finetune", "student-filters", "ted"]


def _clone(module_or_state) -> dict[str, torch.Tensor]:
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    return {k: v.detach().clone().cpu() for k, v in state.items()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


def ted_config(teacher, out: Path, cache: Path, recipe: dict | None = None, task: dict | None = None) -> dict:
    """sst2_config with the ted recipe, on one torch thread: on 2 shared cores, 2 threads are ~5x slower."""
    config = sst2_config(teacher, out, cache, recipe=recipe or TED)
    config["training"] = {**config["training"], "num_threads": 1}
    if task is not None:
        config["task"] = {"max_train_samples": 64, "max_eval_samples": 32, **task}
    return config


@pytest.fixture(scope="module")
def ted_cache(tmp_path_factory) -> Path:
    """One teacher cache for the module: the tiny teacher is fine-tuned on SST-2 once."""
    return tmp_path_factory.mktemp("ted-cache")


@pytest.fixture(scope="module")
def sst2_run(tiny_bert_dir, ted_cache, tmp_path_factory):
    """One SST-2 ted run through lmdistill.api.distill, with every stage's before/after weights recorded."""
    import lmdistill.api

    real_run_stage = lmdistill.api.run_stage
    records: dict[str, dict] = {}
    held: dict[str, nn.Module] = {}

    def spy(stage, index, net, teacher, *args, **kwargs):
        if teacher is None:  # the teacher's own fine-tune, before the recipe runs
            return real_run_stage(stage, index, net, teacher, *args, **kwargs)
        if stage.net == "teacher":
            held["teacher_filters"] = stage.modules["filters"]
        record = {
            "net_is_teacher": net is teacher,
            "net": _clone(net),
            "modules": {name: _clone(m) for name, m in stage.modules.items()},
            "teacher": _clone(teacher),
            "teacher_filters": _clone(held["teacher_filters"]),
        }
        summary = real_run_stage(stage, index, net, teacher, *args, **kwargs)
        record.update({
            "net_after": _clone(net),
            "modules_after": {name: _clone(m) for name, m in stage.modules.items()},
            "teacher_after": _clone(teacher),
            "teacher_filters_after": _clone(held["teacher_filters"]),
            "stage": stage,
        })
        records[stage.name] = record
        return summary

    out = tmp_path_factory.mktemp("ted-sst2") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lmdistill.api, "run_stage", spy)
        result = distill(ted_config(tiny_bert_dir, out, ted_cache))
    return result, records


# ---- stage invariants ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["teacher-filters", "student-filters"])
def test_stage1_trains_only_filters_and_heads(sst2_run, name):
    _, records = sst2_run
    record = records[name]
    stage = record["stage"]
    assert stage.train_backbone is False
    # The teacher's hidden states reach its filters through the teacher path (cacheable); the student
    # stage runs its own network.
    assert stage.uses_teacher is (name == "teacher-filters")
    assert (stage.student_forward is not None) is (name == "teacher-filters")
    assert set(stage.modules) == {"filters", "heads"}
    assert record["net_is_teacher"] is (name == "teacher-filters")
    # The backbone (and, for the teacher, its task head) did not move ...
    assert _equal(record["net"], record["net_after"])
    assert _equal(record["teacher"], record["teacher_after"])
    # ... while every filter and every head did.
    for module in ("filters", "heads"):
        before, after = record["modules"][module], record["modules_after"][module]
        weights = {k for k in before if k.endswith("weight")}
        assert weights and weights <= _changed(before, after), f"{name}: some {module} did not train"


def test_student_finetune_stage_trains_the_student(sst2_run):
    _, records = sst2_run
    record = records["student-finetune"]
    assert not record["net_is_teacher"] and not record["stage"].modules
    assert _changed(record["net"], record["net_after"])
    assert _equal(record["teacher"], record["teacher_after"])


def test_stage2_freezes_teacher_and_teacher_filters(sst2_run):
    result, records = sst2_run
    record = records["ted"]
    stage = record["stage"]
    assert stage.train_backbone and stage.uses_teacher and not record["net_is_teacher"]
    assert set(stage.modules) == {"filters"}  # the student's filters only; no heads, no teacher filters
    assert _equal(record["teacher"], record["teacher_after"])
    assert _equal(record["teacher_filters"], record["teacher_filters_after"])
    assert _changed(record["net"], record["net_after"])  # the student trained ...
    assert _changed(record["modules"]["filters"], record["modules_after"]["filters"])  # ... with its filters
    # The teacher filters stage II used are the ones stage I learned, and they are what was saved.
    stage1_dir = result.output / "stages" / "01-teacher-filters"
    stage1 = safetensors.torch.load_file(str(stage1_dir / "stage_state.safetensors"))
    learned = {k.removeprefix("extras.filters."): v for k, v in stage1.items() if k.startswith("extras.filters.")}
    saved = safetensors.torch.load_file(str(result.output / "extras" / "teacher_filters.safetensors"))
    assert _equal(learned, saved) and _equal(learned, record["teacher_filters_after"])
    logs = [entry for entry in json.loads((result.output / "report.json").read_text())["stages"]]
    assert [entry["stage"] for entry in logs] == STAGES


def test_classification_end_to_end(sst2_run):
    result, _ = sst2_run
    out = result.output
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"] == "ted" and report["task"] == "classification"
    assert 0.0 <= report["student"]["score"] <= 1.0 and report["retention"] > 0
    assert [s["stage"] for s in report["stages"]] == STAGES and all(s["steps"] == 4 for s in report["stages"])
    # Filters are saved apart from the student, keyed by hidden_states index; d_f = teacher width (32).
    teacher_filters = safetensors.torch.load_file(str(out / "extras" / "teacher_filters.safetensors"))
    student_filters = safetensors.torch.load_file(str(out / "extras" / "student_filters.safetensors"))
    assert {k: tuple(v.shape) for k, v in teacher_filters.items() if k.endswith("weight")} == {
        "layer2.weight": (32, 32), "layer4.weight": (32, 32)}
    assert {k: tuple(v.shape) for k, v in student_filters.items() if k.endswith("weight")} == {
        "layer1.weight": (32, 32), "layer2.weight": (32, 32)}
    # The student is a plain HF classifier: no filters, no heads.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    state = safetensors.torch.load_file(str(out / "student" / "model.safetensors"))
    assert not [k for k in state if "filter" in k or "heads" in k]
    model = AutoModelForSequenceClassification.from_pretrained(out / "student")
    tokenizer = AutoTokenizer.from_pretrained(out / "student")
    assert model.config.num_hidden_layers == 2
    logits = model(**tokenizer(["a fine film ."], return_tensors="pt")).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


# ---- build-time checks -----------------------------------------------------------------------
def test_filter_count_mismatch_is_a_config_error_before_training(tiny_bert_dir, tmp_path, cache_dir):
    out = tmp_path / "run"
    recipe = {"name": "ted", "student_filter_interval": 1, "teacher_filter_interval": 1}
    with pytest.raises(ConfigError) as err:
        distill(ted_config(tiny_bert_dir, out, cache_dir, recipe=recipe))
    message = str(err.value)
    assert "\n" not in message
    assert "teacher has 4 layers with filter interval 1 (4 filters)" in message
    assert "student has 2 layers with filter interval 1 (2 filters)" in message
    assert "teacher_filter_interval: 2" in message  # the hint
    assert not (out / "stages").exists() and not (cache_dir / "teachers").exists()  # nothing trained


def test_settings_are_strict_and_default_interval_matches_counts():
    base = sst2_config("unused", Path("unused"), Path("unused"), recipe={"name": "ted", "alpha_mse": 5})
    with pytest.raises(ConfigError, match="recipe.alpha_mes: unknown key"):
        load_config({**base, "recipe": {"name": "ted", "alpha_mes": 5}})
    with pytest.raises(ConfigError, match="recipe.student_filter_interval"):
        load_config({**base, "recipe": {"name": "ted", "student_filter_interval": 0}})
    settings = load_config(base).recipe
    assert settings.alpha_mse == 5 and settings.teacher_filter_interval is None
    assert filter_positions(4, 2) == [2, 4] and filter_positions(6, 3) == [3, 6] and filter_positions(7, 2) == [2, 4, 6]


def test_default_teacher_interval_and_nonlinear_filters(tiny_bert_dir):
    recipe, _, _ = _tiny_recipe(tiny_bert_dir, filter_nonlinear=True)
    assert recipe.teacher_interval == 2 and list(recipe.teacher_filters) == ["layer2", "layer4"]
    assert list(recipe.student_filters) == ["layer1", "layer2"]
    layer = recipe.student_filters["layer1"]
    assert isinstance(layer, nn.Sequential) and [type(m).__name__ for m in layer][::2] == ["Linear", "Linear"]
    assert recipe.num_labels == 2 and set(recipe.extra_outputs()) == {"teacher_filters", "student_filters"}


def _tiny_recipe(tiny_bert_dir, **settings):
    from transformers import AutoModelForSequenceClassification

    from lmdistill.models.students import layer_subset
    from lmdistill.recipes import RecipeContext
    from lmdistill.tasks import build_task

    config = load_config(sst2_config(tiny_bert_dir, Path("unused"), Path("unused"), recipe={"name": "ted", **settings}))
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    student = layer_subset(teacher, [0, 2])
    teacher.eval().requires_grad_(False)
    return TEDRecipe(config.recipe, RecipeContext(config, build_task(config.task), teacher, student)), teacher, student


@pytest.mark.parametrize("mask_padding", [True, False])
def test_stage2_loss_masks_padding_and_never_trains_teacher_filters(tiny_bert_dir, mask_padding):
    from lmdistill.models.features import features_from_output

    recipe, teacher, student = _tiny_recipe(tiny_bert_dir, mask_padding=mask_padding)
    batch = {"input_ids": torch.tensor([[101, 2023, 2003, 2204, 102], [101, 2919, 102, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]), "labels": torch.tensor([1, 0])}
    s_feat = features_from_output(student(**batch, output_hidden_states=True), batch)
    with torch.no_grad():
        t_feat = features_from_output(teacher(**batch, output_hidden_states=True), batch)
    loss_fn = recipe.stages()[-1].loss
    loss, logs = loss_fn(s_feat, t_feat, batch)
    assert set(logs) == {"task", "kd", "mse"} and torch.isfinite(loss)
    expected = float(logs["task"]) + 20.0 * float(logs["kd"]) + 10.0 * float(logs["mse"])  # the default alpha_kl, alpha_mse
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # Garbage in the teacher's padded positions changes the MSE only when padding counts.
    noisy = [h.clone() for h in t_feat.hidden_states]
    for h in noisy:
        h[1, 3:] += 100.0
    t_noisy = type(t_feat)(t_feat.logits, tuple(noisy), None, t_feat.mask, None)
    _, noisy_logs = loss_fn(s_feat, t_noisy, batch)
    assert (float(noisy_logs["mse"]) == pytest.approx(float(logs["mse"]), rel=1e-6)) is mask_padding
    # Gradients reach the student and its filters, never the teacher's filters.
    loss.backward()
    assert all(p.grad is None for p in recipe.teacher_filters.parameters())
    assert all(p.grad is not None for p in recipe.student_filters.parameters())
    assert student.bert.encoder.layer[0].output.dense.weight.grad is not None


# ---- losses on hand-made tensors --------------------------------------------------------------
def test_head_losses_for_each_kind():
    torch.manual_seed(0)
    token_logits = torch.randn(2, 5, 3)
    labels = torch.tensor([[-100, 1, 2, -100, -100], [-100, 0, -100, -100, -100]])
    keep = labels != -100
    expected = nn.functional.cross_entropy(token_logits[keep], labels[keep])
    assert torch.allclose(head_loss("token-classification", token_logits, {"labels": labels}), expected)
    assert head_loss("token-classification", token_logits, {"labels": torch.full((2, 5), -100)}).item() == 0.0
    # QA: a position outside the window (here 99, clamped to L=5) is ignored, as in HF.
    span_logits = torch.randn(2, 5, 2)
    start, end = torch.tensor([1, 99]), torch.tensor([3, 99])
    value = head_loss("question-answering", span_logits, {"start_positions": start, "end_positions": end})
    s, e = span_logits[..., 0], span_logits[..., 1]
    manual = (nn.functional.cross_entropy(s[:1], start[:1]) + nn.functional.cross_entropy(e[:1], end[:1])) / 2
    assert torch.allclose(value, manual) and torch.allclose(qa_loss(s, e, start, end), manual)
    cls_logits = torch.randn(4, 3)
    y = torch.tensor([0, 2, 1, 1])
    assert torch.allclose(head_loss("classification", cls_logits, {"labels": y}),
                          nn.functional.cross_entropy(cls_logits, y))
    assert isinstance(make_filter(8, 16, False, "gelu"), nn.Linear)


# ---- other task kinds -------------------------------------------------------------------------
def test_ner_end_to_end(tiny_bert_dir, tmp_path, cache_dir):
    out = tmp_path / "run"
    task = {"kind": "token-classification", "train": str(DATA / "wikiann_en" / "train.txt"),
            "eval": str(DATA / "wikiann_en" / "dev.txt"), "format": "conll", "text": "tokens", "label": "tags",
            "max_length": 32}
    result = distill(ted_config(tiny_bert_dir, out, cache_dir, task=task))
    report = result.report
    assert report["task"] == "token-classification" and [s["stage"] for s in report["stages"]] == STAGES
    assert 0.0 <= report["student"]["score"] <= 1.0
    heads = safetensors.torch.load_file(str(out / "stages" / "01-teacher-filters" / "stage_state.safetensors"))
    head_weights = {k: tuple(v.shape) for k, v in heads.items() if k.startswith("extras.heads.")}
    assert head_weights["extras.heads.layer2.weight"][1] == 32  # a per-token Linear(d_f, num_tags)
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(out / "student")
    assert head_weights["extras.heads.layer2.weight"][0] == model.config.num_labels > 2


def test_qa_end_to_end(tiny_bert_dir, tmp_path, cache_dir):
    out = tmp_path / "run"
    squad = DATA / "squad_v1.1"
    task = {"kind": "question-answering", "train": str(squad / "train-v1.1.University_of_Notre_Dame.json"),
            "eval": str(squad / "dev-v1.1.Super_Bowl_50.json"), "max_length": 96, "doc_stride": 32,
            "max_train_samples": 16, "max_eval_samples": 8}  # long contexts: 16 questions give ~60 windows
    result = distill(ted_config(tiny_bert_dir, out, cache_dir, task=task))
    report = result.report
    assert report["task"] == "question-answering" and [s["stage"] for s in report["stages"]] == STAGES
    assert all(math.isfinite(s["train_loss"]) for s in report["stages"])
    assert report["student"]["metric"] == "f1" and 0.0 <= report["student"]["score"] <= 100.0
    heads = safetensors.torch.load_file(str(out / "stages" / "03-student-filters" / "stage_state.safetensors"))
    assert tuple(heads["extras.heads.layer1.weight"].shape) == (2, 32)  # start/end logits per filter
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(out / "student")
    assert model.config.num_hidden_layers == 2


# ---- resume -----------------------------------------------------------------------------------
class Killed(Exception):
    pass


def test_killed_in_stage2_resumes_without_redoing_stage1(tiny_bert_dir, ted_cache, tmp_path, monkeypatch):
    from lmdistill.trainer import DistillationTrainer

    out = tmp_path / "run"
    config = ted_config(tiny_bert_dir, out, ted_cache)
    config["training"] = {**config["training"], "save_steps": 1}
    real_compute_loss = DistillationTrainer.compute_loss

    def dies_in_stage2(self, model, inputs, *args, **kwargs):
        if self.stage.name == "ted" and self.state.global_step >= 2:
            raise Killed()
        return real_compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "compute_loss", dies_in_stage2)
    with pytest.raises(Killed):
        distill(config)
    stages = out / "stages"
    assert (stages / "04-ted" / "checkpoint-2").is_dir() and not (stages / "04-ted" / "done.json").exists()
    finished = {p: p.stat().st_mtime_ns for name in STAGES[:3] for p in (stages.glob(f"*-{name}/*.*json"))}
    finished.update({p: p.stat().st_mtime_ns for p in stages.glob("0[123]-*/stage_state.safetensors")})
    assert len(finished) == 9  # per finished stage: done.json, lmdistill-stage.json, stage_state.safetensors

    monkeypatch.setattr(DistillationTrainer, "compute_loss", real_compute_loss)
    trained = []
    real_train = DistillationTrainer.train

    def spy_train(self, *args, **kwargs):
        trained.append((self.stage.name, kwargs.get("resume_from_checkpoint")))
        return real_train(self, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "train", spy_train)
    result = distill(config, resume=True)
    assert [(name, Path(ckpt).name if ckpt else None) for name, ckpt in trained] == [("ted", "checkpoint-2")]
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # stage I outputs untouched
    assert [s["stage"] for s in result.report["stages"]] == STAGES and result.report["stages"][-1]["steps"] == 4
    assert (out / "report.json").is_file() and (stages / "04-ted" / "done.json").is_file()
    # The resumed stage II used the teacher filters learned before the kill.
    stage1 = safetensors.torch.load_file(str(stages / "01-teacher-filters" / "stage_state.safetensors"))
    saved = safetensors.torch.load_file(str(out / "extras" / "teacher_filters.safetensors"))
    assert _equal({k.removeprefix("extras.filters."): v for k, v in stage1.items() if "filters" in k}, saved)
    # The resumed student and filters are those of an uninterrupted run, bit for bit.
    monkeypatch.setattr(DistillationTrainer, "train", real_train)
    uninterrupted = distill({**config, "output": str(tmp_path / "uninterrupted")})
    for name in ("student/model.safetensors", "extras/student_filters.safetensors"):
        assert _equal(safetensors.torch.load_file(str(out / name)),
                      safetensors.torch.load_file(str(uninterrupted.output / name))), name
