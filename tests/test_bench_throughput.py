"""The throughput benchmark compares loops that must optimise the same objective: its hand-written
KD loop (benchmarks/throughput_worker.py) must equal lmdistill's `lwd` recipe, and its student must be
the layer subset lmdistill builds. Checked on a tiny BERT and real SST-2 sentences."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import throughput_worker as worker  # noqa: E402

from lmdistill.config import load_config  # noqa: E402
from lmdistill.models.features import features_from_output  # noqa: E402
from lmdistill.models.students import layer_subset  # noqa: E402
from lmdistill.recipes import RecipeContext, recipe_class  # noqa: E402
from lmdistill.tasks import build_task  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    tokenizer = BertTokenizerFast.from_pretrained(str(REPO / "data" / "tokenizers" / "bert-base-uncased"))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=6, num_attention_heads=2,
                        intermediate_size=64, num_labels=2, id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1})
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(config).eval()
    return tokenizer, teacher


def test_student_is_lmdistills_layer_subset(tiny):
    _, teacher = tiny
    ours, theirs = worker.layer_subset(teacher, worker.STUDENT_LAYERS), layer_subset(teacher, worker.STUDENT_LAYERS)
    assert ours.config.num_hidden_layers == theirs.config.num_hidden_layers == 3
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_plain_kd_loss_equals_lwd_recipe(tiny, tmp_path):
    tokenizer, teacher = tiny
    examples = worker.encode(worker.TRAIN, tokenizer, {"0": 0, "1": 1}, limit=8)
    batch = worker.DataCollatorWithPadding(tokenizer, return_tensors="pt")(examples)
    assert (batch["attention_mask"] == 0).any()  # padding present: the masked MSE is exercised
    student = worker.layer_subset(teacher, worker.STUDENT_LAYERS).eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        t_out = teacher(**inputs, output_hidden_states=True)
    s_out = student(**batch, output_hidden_states=True)
    ours, parts = worker.kd_loss(s_out, t_out, batch["attention_mask"])

    config = load_config({
        "teacher": {"path": str(tmp_path)}, "student": {"layers": worker.STUDENT_LAYERS},
        "task": {"kind": "classification", "train": str(worker.TRAIN), "eval": str(worker.DEV), "text": "sentence",
                 "label": "label", "max_length": worker.MAX_LENGTH, "max_train_samples": 8, "max_eval_samples": 8},
        "recipe": {"name": "lwd", "temperature": worker.TEMPERATURE, "alpha": worker.ALPHA, "layer_map": "uniform",
                   "beta": worker.BETA},
        "output": str(tmp_path / "out")})
    task = build_task(config.task)
    recipe = recipe_class("lwd")(config.recipe, RecipeContext(config=config, task=task, teacher=teacher, student=student))
    assert [tuple(p) for p in recipe.layer_map] == worker.LAYER_PAIRS
    theirs, _ = recipe.stages()[0].loss(features_from_output(s_out, batch), features_from_output(t_out, inputs), batch)
    assert float(parts["hidden"]) > 0 and float(parts["kd"]) > 0
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    params = [p for p in student.parameters() if p.requires_grad]
    g_ours = torch.autograd.grad(ours, params, retain_graph=True)
    g_theirs = torch.autograd.grad(theirs, params)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(g_ours, g_theirs))
