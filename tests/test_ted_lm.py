"""TED on language models (continual pre-training), and lwd / fcd on the same LM task.

Tiny 4-layer, 32-wide Llama (causal, GPT-2 BPE) and BERT (masked, WordPiece) teachers; the student
keeps layers [0, 2]; student filter interval 1 and teacher interval 2 give two filters each
(student hidden states 1, 2; teacher 2, 4). Real text: data/wikitext2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import DATA
from lmdistill import ConfigError
from lmdistill.api import distill
from lmdistill.config import load_config
from lmdistill.models.features import Features, TopKLogits, features_from_output
from lmdistill.models.lm_head import find_lm_head
from lmdistill.recipes.ted import LowRankLMHead, TEDRecipe, lm_head_parameters, lm_loss

LM_DATA = DATA / "wikitext2"
STAGES = ["teacher-filters", "student-finetune", "student-filters", "ted"]
# T = 1: vocabulary logits are cached (top-k) only at T <= training.cache_top_k_max_temperature (1.0)
TED = {"name": "ted", "student_filter_interval": 1, "teacher_filter_interval": 2, "temperature": 1.0}


def _clone(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


def lm_config(teacher: Path, out: Path, cache: Path, recipe: dict, causal: bool = True, **sections) -> dict:
    """A small LM experiment on real WikiText-2 lines, one torch thread, no latency bench."""
    config = {
        "teacher": {"path": str(teacher), "finetune": "never" if causal else "auto", "epochs": 1,
                    "learning_rate": 1e-3},
        "student": {"layers": [0, 2]},
        "task": {"kind": "language-modeling", "lm_type": "causal" if causal else "masked",
                 "train": str(LM_DATA / "train.txt"), "eval": str(LM_DATA / "eval.txt"),
                 "max_length": 32, "block_size": 32, "max_train_samples": 24, "max_eval_samples": 8},
        "recipe": recipe,
        "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1, "seed": 0,
                     "num_threads": 1},
        "bench": {"enabled": False},
        "output": str(out),
        "cache_dir": str(cache),
    }
    config.update(sections)
    return config


@pytest.fixture(scope="module")
def lm_cache(tmp_path_factory) -> Path:
    """One cache for the module: the tiny BERT is fine-tuned on MLM once, teacher outputs are shared."""
    return tmp_path_factory.mktemp("ted-lm-cache")


def spied_run(config: dict) -> tuple:
    """distill(config) with every stage's weights recorded before and after it ran."""
    import lmdistill.api

    real_run_stage = lmdistill.api.run_stage
    records: dict[str, dict] = {}

    def spy(stage, index, net, teacher, *args, **kwargs):
        if teacher is None:  # the teacher's own fine-tune, before the recipe runs
            return real_run_stage(stage, index, net, teacher, *args, **kwargs)
        record = {"net": _clone(net), "teacher": _clone(teacher),
                  "modules": {name: _clone(m) for name, m in stage.modules.items()}}
        summary = real_run_stage(stage, index, net, teacher, *args, **kwargs)
        record.update({"net_after": _clone(net), "teacher_after": _clone(teacher),
                       "modules_after": {name: _clone(m) for name, m in stage.modules.items()},
                       "stage": stage, "net_is_teacher": net is teacher, "summary": summary})
        records[stage.name] = record
        return summary

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lmdistill.api, "run_stage", spy)
        result = distill(config)
    return result, records


@pytest.fixture(scope="module")
def llama_run(tiny_llama_dir, lm_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("ted-llama") / "run"
    return spied_run(lm_config(tiny_llama_dir, out, lm_cache, TED))


@pytest.fixture(scope="module")
def bert_run(tiny_bert_dir, lm_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("ted-bert") / "run"
    return spied_run(lm_config(tiny_bert_dir, out, lm_cache, TED, causal=False))


# ---- the model's own LM head, read on any hidden state ----------------------------------------

def _tiny(kind: str):
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                            num_key_value_heads=1, intermediate_size=32, bos_token_id=0,
                                            eos_token_id=0, pad_token_id=0))
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=16, n_layer=3, n_head=2, bos_token_id=0,
                                          eos_token_id=0))
    return BertForMaskedLM(BertConfig(vocab_size=97, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                      intermediate_size=32, pad_token_id=0))


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
def test_lm_head_reads_hidden_states_as_the_model_does(kind):
    model = _tiny(kind).eval()
    x = torch.randint(1, 97, (2, 7))
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        head = find_lm_head(model)
        norm = {"llama": lambda: model.model.norm, "gpt2": lambda: model.transformer.ln_f}.get(kind, lambda: None)()
        assert head.final_norm is norm and head.width == 16 and head.num_layers == 3
        # The last hidden state (already normalised by HF) read through the head gives the model's logits.
        assert torch.allclose(head(out.hidden_states[3], 3), out.logits, atol=1e-5)
        # Earlier ones go through the final norm first (none in BERT: its layers end in a LayerNorm).
        manual = model.get_output_embeddings() if kind != "bert" else model.cls
        expected = manual(norm(out.hidden_states[1]) if norm is not None else out.hidden_states[1])
        assert torch.equal(head(out.hidden_states[1], 1), expected)
    assert find_lm_head(model.base_model) is None  # a bare encoder has no LM head


# ---- stage I: only the filters train; the frozen LM head stays bit-identical -------------------

@pytest.mark.parametrize("which", ["llama_run", "bert_run"])
@pytest.mark.parametrize("name", ["teacher-filters", "student-filters"])
def test_stage1_changes_only_the_filters(request, which, name):
    result, records = request.getfixturevalue(which)
    record = records[name]
    stage = record["stage"]
    assert stage.train_backbone is False and record["net_is_teacher"] is (name == "teacher-filters")
    # Every weight of the network, its final norm and LM head (tied to the embeddings) included, is
    # bit-identical after the stage; so is the teacher.
    assert not _changed(record["net"], record["net_after"])
    assert not _changed(record["teacher"], record["teacher_after"])
    head_keys = [k for k in record["net"] if "lm_head" in k or "cls." in k or k.endswith("norm.weight")]
    assert head_keys  # the check above covers the head
    # Every filter trained; the default heads (the network's own, frozen) have no parameters.
    before, after = record["modules"]["filters"], record["modules_after"]["filters"]
    assert set(before) == _changed(before, after) and len(before) == 4  # 2 filters x (weight, bias)
    assert record["modules"]["heads"] == {}
    assert record["summary"]["steps"] > 0


def test_stage1_teacher_reads_the_cached_teacher_pass(llama_run):
    result, records = llama_run
    teacher_stage = records["teacher-filters"]["summary"]
    stage2 = records["ted"]["summary"]
    # Stage I of the teacher declares what stage II reads: one teacher pass builds the cache for both.
    assert teacher_stage["teacher_cache"]["status"] == "built"
    assert stage2["teacher_cache"]["status"] == "reused"


def test_project_heads_train_and_the_head_does_not(tiny_llama_dir, tmp_path):
    """lm_head: project: a trainable Linear(d_f -> width) per filter in front of the frozen head."""
    recipe, teacher, student, task = _recipe(tiny_llama_dir, lm_head="project")
    assert lm_head_parameters("project", 32, 32, 0, 0) == 32 * 32 + 32
    heads = recipe.student_heads
    assert set(heads) == {"layer1", "layer2"} and all(isinstance(h, nn.Linear) for h in heads.values())
    batch = _lm_batch()
    stage = recipe.stages()[2]  # student-filters
    student.requires_grad_(False)
    feats = features_from_output(student(**batch, output_hidden_states=True), batch)
    loss, logs = stage.loss(feats, None, batch)
    loss.backward()
    assert all(p.grad is not None for p in heads.parameters())
    assert all(p.grad is not None for p in recipe.student_filters.parameters())
    assert student.lm_head.weight.grad is None and student.model.norm.weight.grad is None
    assert set(logs) == {"filters", "filter_layer1", "filter_layer2"}
    # With identity filters and identity projections, the last filter's stage-I loss is the model's LM loss.
    assert float(logs["filter_layer2"]) == pytest.approx(float(feats.task_loss), rel=1e-5)


def test_low_rank_head_and_its_cost():
    head = LowRankLMHead(576, 64, 49152)
    count = sum(p.numel() for p in head.parameters())
    assert count == lm_head_parameters("low-rank", 576, 576, 64, 49152) == 3_232_896
    assert lm_head_parameters("reuse", 576, 576, 64, 49152) == 0
    assert head(torch.zeros(2, 3, 576)).shape == (2, 3, 49152)


# ---- stage II: LM loss + alpha_kl T^2 KL over the vocabulary + alpha_mse filtered MSE ----------

def _recipe(teacher_dir: Path, **settings):
    from transformers import AutoModelForCausalLM

    from lmdistill.models.students import layer_subset
    from lmdistill.recipes import RecipeContext
    from lmdistill.tasks import build_task

    config = load_config(lm_config(teacher_dir, Path("unused"), Path("unused"), {**TED, **settings}))
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    student = layer_subset(teacher, [0, 2])
    teacher.eval().requires_grad_(False)
    task = build_task(config.task)
    task.bind(teacher.config)
    return TEDRecipe(config.recipe, RecipeContext(config, task, teacher, student)), teacher, student, task


def _lm_batch():
    """Two sequences, the second padded after 4 tokens (labels -100 there, as the LM collator pads)."""
    ids = torch.tensor([[464, 3290, 318, 257, 1332, 286, 262, 3290], [40, 588, 340, 13, 50256, 50256, 50256, 50256]])
    mask = torch.tensor([[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]])
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_stage2_kl_over_the_vocabulary_masks_padding(tiny_llama_dir):
    recipe, teacher, student, task = _recipe(tiny_llama_dir, alpha_kl=3.0, alpha_mse=5.0, temperature=2.0)
    with torch.no_grad():  # a student far enough from the teacher that the KL is not ~0
        for p in student.model.layers.parameters():
            p.add_(torch.randn_like(p))
        student.model.norm.weight.mul_(20.0)
    batch = _lm_batch()
    s_feat = features_from_output(student(**batch, output_hidden_states=True), batch)
    with torch.no_grad():
        t_feat = features_from_output(teacher(**batch, output_hidden_states=True), batch)
    loss_fn = recipe.stages()[-1].loss
    loss, logs = loss_fn(s_feat, t_feat, batch)

    # Independent KL: per real position, sum_v p_t (log p_t - log p_s) at T, averaged, times T^2.
    T, kls = 2.0, []
    for b in range(2):
        for i in range(8):
            if batch["attention_mask"][b, i]:
                p_t = torch.softmax(t_feat.logits[b, i].double() / T, -1)
                log_p_s = torch.log_softmax(s_feat.logits[b, i].double() / T, -1)
                kls.append(float((p_t * (p_t.log() - log_p_s)).sum().detach()))
    assert len(kls) == 12 and sum(kls) / len(kls) > 0.05
    assert float(logs["kd"]) == pytest.approx(T * T * sum(kls) / len(kls), rel=1e-4)
    # The LM term is the next-token CE over real tokens.
    logits, gold = s_feat.logits[:, :-1].detach(), batch["labels"][:, 1:]
    assert float(logs["task"]) == pytest.approx(float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                                      gold.reshape(-1), ignore_index=-100)), rel=1e-5)
    assert float(loss) == pytest.approx(float(logs["task"]) + 3.0 * float(logs["kd"]) + 5.0 * float(logs["mse"]),
                                        rel=1e-5)
    # Garbage in the teacher's padded positions (logits and hidden states) changes nothing.
    noisy_logits = t_feat.logits.clone()
    noisy_logits[1, 4:] = torch.randn_like(noisy_logits[1, 4:]) * 50
    noisy_hidden = tuple(h.clone() for h in t_feat.hidden_states)
    for h in noisy_hidden:
        h[1, 4:] += 100.0
    _, noisy_logs = loss_fn(s_feat, Features(noisy_logits, noisy_hidden, None, t_feat.mask, None), batch)
    for key in ("kd", "mse"):
        assert float(noisy_logs[key]) == pytest.approx(float(logs[key]), rel=1e-6)
    # A cached teacher (top-k with k = V: an empty tail) gives the same KL.
    vocab = t_feat.logits.shape[-1]
    top = t_feat.logits.topk(vocab, dim=-1)
    cached = TopKLogits(top.values, top.indices, torch.full(t_feat.logits.shape[:-1], float("-inf")), T)
    _, cached_logs = loss_fn(s_feat, Features(cached, t_feat.hidden_states, None, t_feat.mask, None), batch)
    assert float(cached_logs["kd"]) == pytest.approx(float(logs["kd"]), rel=1e-4)
    # Gradients reach the student and its filters, never the teacher's filters.
    loss.backward()
    assert all(p.grad is None for p in recipe.teacher_filters.parameters())
    assert all(p.grad is not None for p in recipe.student_filters.parameters())


def test_lm_loss_causal_and_masked():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[3, 4, 5, 6, 7], [1, 2, -100, -100, -100]])
    causal = lm_loss(logits, labels, causal=True)
    rows = [(b, i) for b in range(2) for i in range(4) if labels[b, i + 1] != -100]
    manual = torch.stack([F.cross_entropy(logits[b, i], labels[b, i + 1]) for b, i in rows]).mean()
    assert torch.allclose(causal, manual) and len(rows) == 5
    masked = lm_loss(logits, labels, causal=False)
    rows = [(b, i) for b in range(2) for i in range(5) if labels[b, i] != -100]
    manual = torch.stack([F.cross_entropy(logits[b, i], labels[b, i]) for b, i in rows]).mean()
    assert torch.allclose(masked, manual)
    assert lm_loss(logits, torch.full((2, 5), -100), causal=False).item() == 0.0


def test_filters_start_as_identity_on_language_models(tiny_llama_dir):
    recipe, *_ = _recipe(tiny_llama_dir)
    layer = recipe.teacher_filters["layer4"]
    assert torch.equal(layer.weight, torch.eye(32)) and not layer.bias.any()
    random = _recipe(tiny_llama_dir, filter_init="random")[0].teacher_filters["layer4"]
    assert not torch.equal(random.weight, torch.eye(32))
    with pytest.raises(ConfigError, match="recipe.filter_init: identity needs linear filters"):
        _recipe(tiny_llama_dir, filter_init="identity", filter_nonlinear=True)


# ---- end to end --------------------------------------------------------------------------------

def test_causal_end_to_end_and_the_student_loads_without_lmdistill(llama_run):
    result, records = llama_run
    out = result.output
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"] == "ted" and report["task"] == "language-modeling"
    steps = [s["steps"] for s in report["stages"]]
    assert [s["stage"] for s in report["stages"]] == STAGES and steps[0] > 0 and len(set(steps)) == 1
    assert report["student"]["metric"] == "perplexity" and 1 < report["student"]["score"] < float("inf")
    # Stage II moved the student and its filters; the teacher stayed as it was.
    record = records["ted"]
    assert _changed(record["net"], record["net_after"])
    assert not _changed(record["teacher"], record["teacher_after"])
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(out / 'student')!r})\n"
        f"tok = AutoTokenizer.from_pretrained({str(out / 'student')!r})\n"
        "ids = tok('The game began in', return_tensors='pt').input_ids\n"
        "logits = model(ids).logits\n"
        "assert model.config.num_hidden_layers == 2 and torch.isfinite(logits).all()\n"
        "assert not [m for m in sys.modules if m.startswith('lmdistill')]\n"
        "print(type(model).__name__, tuple(logits.shape))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == "LlamaForCausalLM"
    state_keys = json.loads((out / "student" / "config.json").read_text())
    assert state_keys["architectures"] == ["LlamaForCausalLM"]
    import safetensors.torch

    saved = safetensors.torch.load_file(str(out / "student" / "model.safetensors"))
    assert not [k for k in saved if "filter" in k or "heads" in k]
    filters = safetensors.torch.load_file(str(out / "extras" / "student_filters.safetensors"))
    assert set(filters) == {"layer1.weight", "layer1.bias", "layer2.weight", "layer2.bias"}


def test_masked_end_to_end(bert_run):
    result, _ = bert_run
    report = result.report
    assert report["task"] == "language-modeling" and [s["stage"] for s in report["stages"]] == STAGES
    assert 1 < report["student"]["score"] < float("inf")
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(result.output / "student")
    assert model.config.num_hidden_layers == 2


# ---- bad input ---------------------------------------------------------------------------------

def test_narrow_student_needs_a_head_option(tiny_llama_dir, tmp_path, capsys):
    import yaml

    from lmdistill.cli import main

    out, cache = tmp_path / "out", tmp_path / "cache"
    narrow = {"config": {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                         "num_key_value_heads": 1, "intermediate_size": 32}}
    config = lm_config(tiny_llama_dir, out, cache, TED, student=narrow)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["run", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lmdistill: error:")]
    assert len(lines) == 1, err
    assert "recipe.lm_head:" in lines[0] and "16-wide" in lines[0] and "set recipe.lm_head: project" in lines[0]
    assert not out.exists() and not (cache / "outputs").exists()
    # With the option set, the same student builds: projections map the teacher's width to the student's.
    recipe = load_config({**config, "recipe": {**TED, "lm_head": "project"}}).recipe
    assert recipe.lm_head == "project"


# ---- lwd and fcd on the same LM task -----------------------------------------------------------

@pytest.mark.parametrize("recipe,causal", [
    ({"name": "lwd", "layer_map": "uniform", "beta": 1.0, "temperature": 2.0}, True),
    ({"name": "lwd", "layer_map": "uniform", "beta": 1.0, "temperature": 2.0}, False),
    ({"name": "fcd", "temperature": 2.0, "causal": "auto"}, False),
])
def test_layerwise_recipes_on_language_modelling(recipe, causal, tiny_llama_dir, tiny_bert_dir, lm_cache, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    out = tmp_path / "run"
    result, records = spied_run(lm_config(tiny_llama_dir if causal else tiny_bert_dir, out, lm_cache, recipe,
                                          causal=causal))
    report = result.report
    assert report["recipe"] == recipe["name"] and [s["stage"] for s in report["stages"]] == [recipe["name"]]
    assert 1 < report["student"]["score"] < float("inf")
    record = records[recipe["name"]]
    assert _changed(record["net"], record["net_after"]) and not _changed(record["teacher"], record["teacher_after"])
    assert record["summary"]["steps"] > 0
    model = (AutoModelForCausalLM if causal else AutoModelForMaskedLM).from_pretrained(out / "student")
    assert model.config.num_hidden_layers == 2
