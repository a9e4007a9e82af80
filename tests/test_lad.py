"""LAD (recipes/lad.py) and its LengthDrop baseline: losses against hand computations, the memory
queue, the two stages end to end on a tiny BERT with real text, the keep-ratio report, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from conftest import DATA, sst2_config
from lmdistill.api import distill
from lmdistill.cli import main
from lmdistill.losses import attention_score_mse, info_nce
from lmdistill.recipes.lad import MemoryQueue, projection

CORPUS = str(DATA / "lad_corpus" / "*.txt")
LAD = {"name": "lad", "corpus": [CORPUS], "block_size": 32, "max_corpus_tokens": 2048, "token_queue_size": 128,
       "sentence_queue_size": 64}


# ---- losses ---------------------------------------------------------------------------------------

def _unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def test_info_nce_with_a_queue_equals_a_hand_computation():
    query = [[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]]
    positive = [[2.0, 1.0, 1.0], [0.5, 0.0, 1.0]]
    queue = [_unit([1.0, 0.0, 0.0]), _unit([0.0, 1.0, 1.0]), _unit([-1.0, 2.0, 0.5])]
    tau = 0.07
    losses = []
    for q, k in zip(query, positive):
        q, k = _unit(q), _unit(k)
        pos = sum(a * b for a, b in zip(q, k)) / tau
        neg = [sum(a * b for a, b in zip(q, n)) / tau for n in queue]
        losses.append(-(pos - math.log(math.exp(pos) + sum(math.exp(x) for x in neg))))
    got = info_nce(torch.tensor(query), torch.tensor(positive), torch.tensor(queue), tau)
    assert got.item() == pytest.approx(sum(losses) / 2, rel=1e-5)


def test_attention_score_mse_equals_a_hand_computation():
    big = -1e30  # a masked entry (the mask is already added to the scores)
    student = torch.tensor([[[[9.0, 9.0, 9.0], [9.0, 1.0, big], [9.0, 2.0, big]]]])
    teacher = torch.tensor([[[[0.0, 0.0, 0.0], [0.0, 0.5, big], [0.0, 4.0, big]]]])
    # row and column 0 dropped; masked entries are 0 on both sides; the mean runs over all 4 entries
    want = ((1.0 - 0.5) ** 2 + 0 + (2.0 - 4.0) ** 2 + 0) / 4
    assert attention_score_mse(student, teacher).item() == pytest.approx(want)


def test_queue_is_updated_without_gradients_and_wraps_around():
    queue = MemoryQueue(4, 3, seed=0)
    assert not queue.vectors.requires_grad and "vectors" not in dict(queue.named_parameters())
    student = torch.randn(3, 3, requires_grad=True)
    teacher = torch.randn(3, 3, requires_grad=True)  # a teacher vector that (wrongly) carried a graph
    before = queue.vectors.clone()
    loss = info_nce(student, teacher, queue.vectors)
    queue.enqueue(teacher)
    loss.backward()  # the in-place update after the loss does not break its backward pass
    assert teacher.grad is None and student.grad is not None
    assert not queue.vectors.requires_grad and queue.vectors.grad_fn is None
    assert torch.allclose(loss, info_nce(student, teacher, before))  # the loss saw the queue before the update
    unit = torch.nn.functional.normalize(teacher.detach(), dim=-1)
    assert torch.allclose(queue.vectors[:3], unit) and torch.equal(queue.vectors[3], before[3])
    queue.enqueue(unit[:2] * 5)  # wraps: slot 3, then slot 0
    assert torch.allclose(queue.vectors[3], unit[0]) and torch.allclose(queue.vectors[0], unit[1])
    assert int(queue.pointer) == 1


def test_projection_starts_as_the_identity_when_widths_match():
    x = torch.randn(2, 8)
    assert torch.equal(projection(8, 8)(x), x)
    assert projection(8, 16).weight.shape == (16, 8)


# ---- end to end ---------------------------------------------------------------------------------------

def lad_config(teacher, out: Path, cache: Path, recipe=None, **sections) -> dict:
    config = sst2_config(teacher, out, cache, recipe=recipe or dict(LAD), **sections)
    config["training"] = {**config["training"], "num_threads": 1}
    config["bench"] = {**config["bench"], "keep_ratios": [1.0, 0.5]}
    return config


@pytest.fixture(scope="module")
def lad_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lad-cache")


@pytest.fixture(scope="module")
def lad_run(tiny_bert_dir, lad_cache, tmp_path_factory):
    """One lad run (general + task stage) through the pipeline, recording the stages' teachers and modules."""
    import lmdistill.api

    real_run_stage = lmdistill.api.run_stage
    records = {}

    def spy(stage, index, net, teacher, *args, **kwargs):
        if teacher is None:
            return real_run_stage(stage, index, net, teacher, *args, **kwargs)
        clone = lambda m: {k: v.detach().clone() for k, v in m.state_dict().items()}  # noqa: E731
        stage_teacher = stage.teacher if stage.teacher is not None else teacher
        before = {"teacher": clone(stage_teacher), "net": clone(net),
                  "modules": {n: clone(m) for n, m in stage.modules.items()}}
        summary = real_run_stage(stage, index, net, teacher, *args, **kwargs)
        after = {"teacher": clone(stage_teacher), "net": clone(net),
                 "modules": {n: clone(m) for n, m in stage.modules.items()}}
        records[stage.name] = {"before": before, "after": after, "stage": stage, "pipeline_teacher": teacher}
        return summary

    lmdistill.api.run_stage = spy
    try:
        out = tmp_path_factory.mktemp("lad-run") / "out"
        result = distill(lad_config(tiny_bert_dir, out, lad_cache))
    finally:
        lmdistill.api.run_stage = real_run_stage
    return result, records


def test_lad_runs_both_stages_on_real_text(lad_run):
    result, records = lad_run
    assert [s["stage"] for s in result.report["stages"]] == ["general", "task"]
    for summary in result.report["stages"]:
        assert summary["steps"] > 0 and all(math.isfinite(loss) for _, loss in summary["loss_curve"])
    general, task = records["general"], records["task"]
    # the general stage reads the teacher's attention scores and q/k: always live; the task stage is cached
    summaries = {s["stage"]: s for s in result.report["stages"]}
    assert "teacher_cache" not in summaries["general"] and summaries["task"]["teacher_cache"]["status"] == "built"
    # stage 1 reads the corpus without labels, from the pretrained teacher; stage 2 the fine-tuned one
    assert general["stage"].data.name == "corpus" and not general["stage"].labels
    assert general["stage"].teacher is not general["pipeline_teacher"]
    assert task["stage"].teacher is None
    # no teacher weight moves, not even the last layer the reconstruction runs through
    for record in (general, task):
        before, after = record["before"]["teacher"], record["after"]["teacher"]
        assert all(torch.equal(before[k], after[k]) for k in before)
    # the student, the projections and the queues change
    for record in (general, task):
        assert any(not torch.equal(record["before"]["net"][k], record["after"]["net"][k]) for k in record["before"]["net"])
    modules = general["after"]["modules"]
    assert not torch.equal(general["before"]["modules"]["dense_reconstruct"]["weight"], modules["dense_reconstruct"]["weight"])
    assert not torch.equal(general["before"]["modules"]["queue_mid"]["vectors"], modules["queue_mid"]["vectors"])
    assert not torch.equal(task["before"]["modules"]["sentence_queue"]["vectors"],
                           task["after"]["modules"]["sentence_queue"]["vectors"])
    # the reconstruction's [MASK] filler trains the student's [MASK] embedding row (token id 103)
    key = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(general["before"]["net"][key][103], general["after"]["net"][key][103])


def test_lad_student_is_a_prunable_hf_folder(lad_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import lmdistill.models.pruning  # noqa: F401  registers the prunable classes

    result, _ = lad_run
    config = json.loads((result.student_dir / "config.json").read_text())
    assert config["model_type"] == "prunable-bert" and config["architectures"] == ["PrunableBertForSequenceClassification"]
    assert config["keep_ratio"] == 1.0
    model = AutoModelForSequenceClassification.from_pretrained(result.student_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.student_dir)
    batch = tokenizer(["a gripping film .", "it is dull and far too long ."], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch, length_config=0.5).logits.shape == (2, 2)
    assert (result.output / "extras" / "dense_reconstruct.safetensors").is_file()


def test_report_has_the_pruning_curve(lad_run):
    result, _ = lad_run
    student = result.report["student"]
    pruning = student["pruning"]
    assert [e["keep_ratio"] for e in pruning] == [1.0, 0.5]
    for entry in pruning:
        assert set(entry["latency_ms"]) == {"batch1", "batch4"} and all(v > 0 for v in entry["latency_ms"].values())
        assert 0 <= entry["score"] <= 1
    full, half = pruning
    # grouped-by-length scoring at keep ratio 1 equals the ordinary (padded) evaluation
    assert full["score"] == pytest.approx(student["score"])
    seq_len = result.report["bench"]["seq_len"]
    assert full["lengths"] == [seq_len, seq_len]
    assert half["lengths"][0] == math.ceil(seq_len / 2) and half["gflops_batch1"] < full["gflops_batch1"]
    assert "keep ratio 0.5" in (result.output / "report.md").read_text()


def test_lad_token_classification_task_stage(tiny_bert_dir, lad_cache, tmp_path):
    """Token classification through the restore path: the task stage alone (no corpus)."""
    task = {"kind": "token-classification", "train": str(DATA / "wikiann_en" / "train.txt"),
            "eval": str(DATA / "wikiann_en" / "dev.txt"), "format": "conll", "text": "tokens", "label": "tags",
            "max_length": 32, "max_train_samples": 48, "max_eval_samples": 24}
    config = lad_config(tiny_bert_dir, tmp_path / "out", lad_cache, recipe={"name": "lad", "sentence_queue_size": 16},
                        task=task)
    config["bench"]["keep_ratios"] = [0.5]
    result = distill(config)
    assert [s["stage"] for s in result.report["stages"]] == ["task"]
    entry = result.report["student"]["pruning"][0]
    assert entry["metrics"]["metric"] == "f1" and 0 <= entry["score"] <= 1


def test_kd_student_pruned_after_training(tiny_bert_dir, lad_cache, tmp_path):
    """A plain kd student is measured at keep ratios (post-hoc pruning; the saved student stays plain)."""
    result = distill(lad_config(tiny_bert_dir, tmp_path / "out", lad_cache, recipe={"name": "kd"}))
    assert json.loads((result.student_dir / "config.json").read_text())["model_type"] == "bert"
    assert [e["keep_ratio"] for e in result.report["student"]["pruning"]] == [1.0, 0.5]


def test_lengthdrop_baseline(tiny_bert_dir, lad_cache, tmp_path):
    config = lad_config(tiny_bert_dir, tmp_path / "out", lad_cache,
                        recipe={"name": "lengthdrop", "num_sandwich": 1, "length_drop_ratio_bound": 0.3})
    result = distill(config)
    assert result.report["stages"][0]["stage"] == "lengthdrop"
    assert json.loads((result.student_dir / "config.json").read_text())["model_type"] == "prunable-bert"


# ---- bad input: one line, exit 2, nothing written -------------------------------------------------------

def run_cli(config: dict, tmp_path, capsys, eval_model=None, extra=()):
    """`lmdistill run CONFIG`, or `lmdistill eval MODEL --config CONFIG ...` with `eval_model`."""
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["run", str(path)] if eval_model is None else ["eval", str(eval_model), "--config", str(path), *extra]
    return main(argv), capsys.readouterr().err


def one_error_line(code, err) -> str:
    assert code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("lmdistill: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("ratio", [1.5, 0.0, -0.2])
def test_keep_ratio_outside_the_unit_interval(tiny_bert_dir, tmp_path, cache_dir, capsys, ratio):
    config = lad_config(tiny_bert_dir, tmp_path / "out", cache_dir)
    config["bench"]["keep_ratios"] = [1.0, ratio]
    line = one_error_line(*run_cli(config, tmp_path, capsys))
    assert "bench.keep_ratios" in line and ("must be > 0" in line or "must be <= 1" in line)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, fragment", [
    (["--keep-ratio", "1.5"], "--keep-ratio: 1.5 is not a keep ratio; give a number in (0, 1]"),
    (["--length-config", "12,8,4"], "--length-config: [12, 8, 4] has 3 entries, but the model has 4 layers"),
    (["--length-config", "12,16,8,4"], "grows from layer 1 (12) to layer 2 (16)"),
])
def test_eval_rejects_a_bad_length_configuration(tiny_classifier_dir, tmp_path, cache_dir, capsys, option, fragment):
    config = sst2_config(tiny_classifier_dir, tmp_path / "out", cache_dir)
    line = one_error_line(*run_cli(config, tmp_path, capsys, tiny_classifier_dir, option))
    assert fragment in line


def test_eval_at_a_keep_ratio(tiny_classifier_dir, tmp_path, cache_dir, capsys):
    config = sst2_config(tiny_classifier_dir, tmp_path / "out", cache_dir)
    code, _ = run_cli(config, tmp_path, capsys, tiny_classifier_dir, ["--keep-ratio", "0.5"])
    assert code == 0


@pytest.mark.parametrize("lengths, fragment", [
    ([4, 2, 2], "has 3 entries, but the model has 2 layers"),
    ([4, 6], "grows from layer 1 (4) to layer 2 (6)"),
])
def test_lad_default_length_configuration_is_checked(tiny_bert_dir, tmp_path, cache_dir, capsys, lengths, fragment):
    config = lad_config(tiny_bert_dir, tmp_path / "out", cache_dir, recipe={**LAD, "default_length_config": lengths})
    line = one_error_line(*run_cli(config, tmp_path, capsys))
    assert "recipe.default_length_config" in line and fragment in line
    assert not (tmp_path / "out").exists()


def test_lad_with_an_architecture_that_cannot_prune(tiny_llama_dir, tmp_path, cache_dir, capsys):
    config = lad_config(tiny_llama_dir, tmp_path / "out", cache_dir)
    line = one_error_line(*run_cli(config, tmp_path, capsys))
    assert "LlamaForSequenceClassification" in line and "no prunable implementation" in line
    assert "BertForSequenceClassification" in line and "RobertaForSequenceClassification" in line
    assert not (tmp_path / "out").exists()


def test_keep_ratios_with_an_architecture_that_cannot_prune(tiny_llama_dir, tmp_path, cache_dir, capsys):
    config = lad_config(tiny_llama_dir, tmp_path / "out", cache_dir, recipe={"name": "kd"})
    line = one_error_line(*run_cli(config, tmp_path, capsys))
    assert line.startswith("lmdistill: error: bench.keep_ratios: the student is a LlamaForSequenceClassification")
    assert not (tmp_path / "out").exists()


def test_head_count_mismatch_for_the_attention_score_loss(tiny_bert_dir, tmp_path, cache_dir, capsys):
    config = lad_config(tiny_bert_dir, tmp_path / "out", cache_dir,
                        student={"config": {"num_hidden_layers": 2, "num_attention_heads": 4}})
    line = one_error_line(*run_cli(config, tmp_path, capsys))
    assert "the student has 4 attention heads and the teacher 2" in line
    assert not (tmp_path / "out").exists()
