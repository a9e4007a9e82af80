"""GLMD and prompt classification, end to end on a tiny Llama and a tiny BERT with real text slices;
label-free stages; bad input."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import DATA, sst2_config
from lmdistill.api import distill
from lmdistill.cli import main
from lmdistill.config import TaskConfig
from lmdistill.recipes.glmd import GLMDRecipe
from lmdistill.tasks import build_task

BOOKS = DATA / "books"
SST2_PROMPT = {"kind": "prompt-classification", "train": str(DATA / "sst2" / "train.tsv"),
               "eval": str(DATA / "sst2" / "dev.tsv"), "text": "sentence", "label": "label",
               "pattern": "{text} Sentiment:", "verbalizers": {"0": " negative", "1": " positive"},
               "max_length": 32, "max_train_samples": 32, "max_eval_samples": 32}


def cli_eval(model_dir, config: dict, tmp_path, capsys) -> dict:
    """`lmdistill eval MODEL --config CONFIG`, as a user runs it; its JSON entry."""
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert main(["eval", str(model_dir), "--config", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def prompt_config(teacher, out, cache, recipe, **task):
    config = sst2_config(teacher, out, cache, recipe=recipe)
    config["task"] = {**SST2_PROMPT, **task}
    config["bench"] = {"enabled": False}
    config["training"]["batch_size"] = 8
    return config


# ---- prompt classification ------------------------------------------------------------------------

def bound_task(folder, **task):
    from transformers import AutoConfig, AutoTokenizer

    built = build_task(TaskConfig(**{**SST2_PROMPT, **task}))
    built.bind(AutoConfig.from_pretrained(folder))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    built.bind_tokenizer(tokenizer)
    return built, tokenizer


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_class_scores_are_the_verbalizer_logits_at_the_answer_position(kind, tiny_llama_dir, tiny_bert_mlm_dir):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    if kind == "causal":
        folder, auto, extra = tiny_llama_dir, AutoModelForCausalLM, {}
    else:
        folder, auto, extra = tiny_bert_mlm_dir, AutoModelForMaskedLM, {"pattern": "{text} It was {mask}."}
    task, tokenizer = bound_task(folder, **extra)
    model = auto.from_pretrained(folder).eval()
    dataset = task.train_dataset(tokenizer, model.config)
    rows = [dataset[i] for i in range(4)]
    assert len({len(r["input_ids"]) for r in rows}) > 1  # padding is exercised
    batch = task.collator(tokenizer)(rows)
    with torch.no_grad():
        features = task.model_forward(model, batch)
    ids = task.verbalizer_ids
    for i, row in enumerate(rows):
        tokens = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=tokens).logits[0]
        if kind == "causal":
            position = len(row["input_ids"]) - 1
            assert tokenizer.decode(row["input_ids"]).endswith(" Sentiment:")
        else:
            position = row["input_ids"].index(tokenizer.mask_token_id)
            assert "it was [MASK]." in tokenizer.decode(row["input_ids"])
        assert row["answer_position"] == position
        expected = torch.stack([logits[position, ids[c]].mean() for c in range(2)])
        assert torch.allclose(features.logits[i], expected, atol=1e-4)
    expected_loss = torch.nn.functional.cross_entropy(features.logits, batch["labels"])
    assert features.task_loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)


def test_long_inputs_are_cut_but_the_pattern_stays(tiny_llama_dir):
    task, tokenizer = bound_task(tiny_llama_dir, max_length=12)
    ids, position, cut = task.encode(["a " * 50 + "very long review"], tokenizer, 12)
    assert cut and len(ids) <= 12 and position == len(ids) - 1
    assert tokenizer.decode(ids).endswith(" Sentiment:")


@pytest.mark.parametrize("recipe", [{"name": "finetune"}, {"name": "kd", "temperature": 2.0, "alpha": 0.5}])
def test_kd_and_finetune_on_prompt_classification(recipe, tiny_llama_dir, tmp_path, cache_dir, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    config = prompt_config(tiny_llama_dir, out, cache_dir, recipe)
    result = distill(config)
    report = result.report
    assert report["task"] == "prompt-classification" and report["teacher_info"]["finetuned"]
    assert report["student"]["metric"] == "accuracy" and 0 <= report["student"]["score"] <= 1
    # The cached teacher is recognised as fine-tuned for this pattern and reused.
    cached = json.loads((cache_dir / "teachers" / report["teacher_info"]["cache_key"] / "config.json").read_text())
    assert cached["prompt_task"]
    student = AutoModelForCausalLM.from_pretrained(out / "student")
    assert student.config.num_hidden_layers == 2
    if recipe["name"] == "kd":
        assert cli_eval(out / "student", config, tmp_path, capsys)["score"] == pytest.approx(report["student"]["score"])


# ---- glmd end to end ------------------------------------------------------------------------------

@pytest.fixture()
def seen_batches(monkeypatch):
    """Every batch the glmd losses see, by stage kind."""
    seen = {"word": [], "soft": []}
    word, soft = GLMDRecipe.word_loss, GLMDRecipe.soft_loss

    def word_loss(self, student, teacher, batch):
        seen["word"].append(set(batch))
        return word(self, student, teacher, batch)

    def soft_loss(self, student, teacher, batch):
        seen["soft"].append(set(batch))
        return soft(self, student, teacher, batch)

    monkeypatch.setattr(GLMDRecipe, "word_loss", word_loss)
    monkeypatch.setattr(GLMDRecipe, "soft_loss", soft_loss)
    return seen


def test_glmd_prompt_task_on_tiny_llama_with_vocabulary_compression(tiny_llama_dir, tmp_path, cache_dir, capsys,
                                                                     seen_batches):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    recipe = {"name": "glmd", "corpus": [str(BOOKS / "*.txt")], "corpus_max_tokens": 2048, "block_size": 64,
              "vocab_keep": 0.1, "general_learning_rate": 3e-3}
    config = prompt_config(tiny_llama_dir, out, cache_dir, recipe)
    report = distill(config).report
    assert [s["stage"] for s in report["stages"]] == ["glmd-general", "glmd-task-words", "glmd-soft-labels"]
    assert all(s["steps"] > 0 for s in report["stages"])
    # No stage ever saw a gold label.
    assert seen_batches["word"] and seen_batches["soft"]
    assert all("labels" not in keys for keys in seen_batches["word"] + seen_batches["soft"])
    assert all("answer_position" in keys for keys in seen_batches["soft"])
    # The student is compressed to 5056 of 50257 tokens and is a plain HF folder.
    student = AutoModelForCausalLM.from_pretrained(out / "student")
    tokenizer = AutoTokenizer.from_pretrained(out / "student")
    assert student.config.vocab_size == len(tokenizer) == 5056
    assert student.config.vocab_compression["kept_size"] == 5056
    assert report["student"]["params"] == sum(p.numel() for p in student.parameters())
    vocab_map = load_file(str(out / "extras" / "vocab_map.safetensors"))
    assert vocab_map["kept_ids"].shape == (5056,)
    for word in (" negative", " positive"):  # verbalizers survive as single tokens
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1
    # `lmdistill eval` scores the saved student with its own tokenizer, as the run did.
    assert cli_eval(out / "student", config, tmp_path, capsys)["score"] == pytest.approx(report["student"]["score"])


def test_glmd_language_modelling_on_tiny_bert_split_mode(tiny_bert_mlm_dir, tmp_path, cache_dir, seen_batches):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    out = tmp_path / "run"
    config = sst2_config(tiny_bert_mlm_dir, out, cache_dir, recipe={
        "name": "glmd", "vocab_keep": 0.5, "dropped_tokens": "split"})
    config["task"] = {"kind": "language-modeling", "train": str(BOOKS / "alice.txt"),
                      "eval": str(BOOKS / "frankenstein.txt"), "block_size": 32, "max_train_samples": 120,
                      "max_eval_samples": 60}
    config["bench"] = {"enabled": False}
    report = distill(config).report
    # Stage 1 only, on the task's own training text (no corpus given), with the pretrained teacher.
    assert [s["stage"] for s in report["stages"]] == ["glmd-general"]
    assert report["teacher_info"]["finetuned"] is False
    assert seen_batches["word"] and all("labels" not in keys for keys in seen_batches["word"])
    student = AutoModelForMaskedLM.from_pretrained(out / "student")
    tokenizer = AutoTokenizer.from_pretrained(out / "student")
    assert student.config.vocab_size == len(tokenizer) == 15296
    text = "Alice was beginning to get very tired of sitting by her sister."
    ids = tokenizer(text)["input_ids"]
    assert max(ids) < 15296 and tokenizer.decode(ids, skip_special_tokens=True) == text.lower()
    assert report["student"]["metric"] == "perplexity" and report["student"]["score"] < float("inf")


# ---- bad input ---------------------------------------------------------------------------------------

def run_cli(config: dict, tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["run", str(path)])
    return code, capsys.readouterr().err


def assert_error(code, err, fragment, out):
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lmdistill: error:")]
    assert len(lines) == 1 and fragment in lines[0], err
    assert not out.exists()


@pytest.mark.parametrize("recipe, task, fragment", [
    ({"vocab_keep": 0}, {}, "recipe.vocab_keep: must be > 0"),
    ({"vocab_keep": 1.5}, {}, "recipe.vocab_keep: 1.5 is outside (0, 1]"),
    ({"vocab_keep": 60000}, {}, "recipe.vocab_keep: 60000 tokens is larger than the vocabulary (50257 tokens)"),
    ({"corpus": ["no/such/*.txt"]}, {}, "recipe.corpus: 'no/such/*.txt' matches no file"),
    ({}, {"verbalizers": {"0": " negative", "1": " xylophones"}},
     "task.verbalizers.1: ' xylophones' is not one token of the tokenizer; it splits into 'Ġx' + 'yl' + 'oph' + 'ones'"),
    ({}, {"pattern": "Sentiment:"}, "task.pattern: 'Sentiment:' has no {text} (or {sentence}) placeholder"),
    ({"stages": [1]}, {}, "recipe.corpus: stage 1 (general distillation) needs text files"),
])
def test_glmd_bad_input(recipe, task, fragment, tiny_llama_dir, tmp_path, cache_dir, capsys):
    out = tmp_path / "out"
    config = prompt_config(tiny_llama_dir, out, cache_dir, {"name": "glmd", **recipe}, **task)
    assert_error(*run_cli(config, tmp_path, capsys), fragment, out)


def test_glmd_rejects_a_teacher_without_lm_head(tiny_classifier_dir, tmp_path, cache_dir, capsys):
    out = tmp_path / "out"
    config = prompt_config(tiny_classifier_dir, out, cache_dir, {"name": "glmd"},
                           pattern="{text} it was {mask}.", verbalizers={"0": "bad", "1": "good"})
    assert_error(*run_cli(config, tmp_path, capsys),
                 "teacher.path: glmd distils the teacher's word predictions, but the teacher is a "
                 "BertForSequenceClassification with no language-model head", out)


def test_glmd_rejects_a_student_with_another_vocabulary(tiny_llama_dir, tmp_path, cache_dir, capsys):
    from transformers import BertTokenizer, LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other-vocab"
    LlamaForCausalLM(LlamaConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, intermediate_size=64)).save_pretrained(other)
    BertTokenizer.from_pretrained(DATA / "tokenizers" / "bert-base-uncased").save_pretrained(other)
    out = tmp_path / "out"
    config = prompt_config(tiny_llama_dir, out, cache_dir, {"name": "glmd"})
    config["student"] = {"path": str(other)}
    assert_error(*run_cli(config, tmp_path, capsys),
                 "student: its vocabulary (30522 tokens) differs from the teacher's (50257)", out)
