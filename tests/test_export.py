"""`lmdistill export` (ONNX) and `lmdistill eval` on an export.

The exported graphs are run with onnxruntime and a tokenizer only (as the README tells a user to),
on real sentences from data/ at batch sizes and lengths other than the export's example, and
compared with the PyTorch model they came from.
"""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import DATA, sst2_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnxruntime as ort  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from lmdistill.cli import main  # noqa: E402

FP32_TOLERANCE = 1e-4


def sst2_sentences(count: int) -> list[str]:
    with open(DATA / "sst2" / "dev.tsv", encoding="utf-8") as handle:
        return [row["sentence"] for row in csv.DictReader(handle, delimiter="\t")][:count]


def wikiann_sentences(count: int) -> list[str]:
    sentences, words = [], []
    for line in (DATA / "wikiann_en" / "dev.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            words.append(line.split()[0])
        elif words:
            sentences.append(" ".join(words))
            words = []
        if len(sentences) == count:
            break
    return sentences


def run_onnx(folder, texts: list[str], pairs: list[str] | None = None) -> tuple[dict, list[np.ndarray]]:
    """What the README tells a user to do: the tokenizer and onnxruntime, nothing of lmdistill."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    # The tiny test models have 128 positions (the tokenizer's limit is BERT-base's 512).
    encoded = tokenizer(texts, *([pairs] if pairs else []), padding=True, truncation=True, max_length=128,
                        return_tensors="np")
    feed = {i.name: encoded[i.name].astype(np.int64) for i in session.get_inputs()}
    return feed, session.run(None, feed)


def export(model_dir, out, *extra) -> None:
    assert main(["export", str(model_dir), "--out", str(out), *extra]) == 0


@pytest.fixture(scope="module")
def classifier_export(tiny_classifier_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "classifier"
    export(tiny_classifier_dir, out)
    return out


def test_sequence_classification_matches_pytorch(tiny_classifier_dir, classifier_export):
    out = classifier_export
    assert {"model.onnx", "config.json", "export.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir).eval()
    texts = sst2_sentences(40)
    for rows in (texts[:1], texts[1:8], texts[8:40]):  # batch 1, 7 and 32, each padded to its longest
        feed, (logits,) = run_onnx(out, rows)
        with torch.no_grad():
            reference = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
        assert logits.shape == reference.shape
        np.testing.assert_allclose(logits, reference, atol=FP32_TOLERANCE, rtol=0)
    info = json.loads((out / "export.json").read_text())
    assert info["inputs"] == ["input_ids", "token_type_ids", "attention_mask"] and info["outputs"] == ["logits"]
    assert max(info["check"]["max_abs_diff"].values()) < FP32_TOLERANCE
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for item in session.get_inputs():  # both axes symbolic: any batch size and length
        assert all(isinstance(dim, str) for dim in item.shape), item.shape


def test_sentence_pairs_use_token_type_ids(tiny_classifier_dir, classifier_export):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir).eval()
    texts = sst2_sentences(6)
    feed, (logits,) = run_onnx(classifier_export, texts[:3], texts[3:6])
    assert feed["token_type_ids"].any()
    with torch.no_grad():
        reference = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    np.testing.assert_allclose(logits, reference, atol=FP32_TOLERANCE, rtol=0)


def test_token_classification_matches_pytorch(tiny_bert_dir, tmp_path):
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(tiny_bert_dir, num_labels=7).eval()
    model.save_pretrained(tmp_path / "tagger")
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "tagger")
    export(tmp_path / "tagger", tmp_path / "onnx")
    feed, (logits,) = run_onnx(tmp_path / "onnx", wikiann_sentences(9))
    with torch.no_grad():
        reference = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    real = feed["attention_mask"].astype(bool)  # padded positions carry no prediction
    assert logits.shape == reference.shape == (9, feed["input_ids"].shape[1], 7)
    np.testing.assert_allclose(logits[real], reference[real], atol=FP32_TOLERANCE, rtol=0)


def test_question_answering_matches_pytorch(tiny_bert_dir, tmp_path):
    torch.manual_seed(0)
    model = AutoModelForQuestionAnswering.from_pretrained(tiny_bert_dir).eval()
    model.save_pretrained(tmp_path / "qa")
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "qa")
    export(tmp_path / "qa", tmp_path / "onnx")
    squad = json.loads(next((DATA / "squad_v1.1").glob("dev-*.json")).read_text())
    paragraphs = [p for article in squad["data"] for p in article["paragraphs"]][:3]
    questions = [p["qas"][0]["question"] for p in paragraphs]
    feed, (start, end) = run_onnx(tmp_path / "onnx", questions, [p["context"] for p in paragraphs])
    with torch.no_grad():
        output = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
    real = feed["attention_mask"].astype(bool)
    np.testing.assert_allclose(start[real], output.start_logits.numpy()[real], atol=FP32_TOLERANCE, rtol=0)
    np.testing.assert_allclose(end[real], output.end_logits.numpy()[real], atol=FP32_TOLERANCE, rtol=0)


def test_causal_lm_matches_pytorch(tiny_llama_dir, tmp_path):
    export(tiny_llama_dir, tmp_path / "onnx")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    lines = [line for line in (DATA / "wikitext2" / "eval.txt").read_text().splitlines() if len(line) > 40][:3]
    feed, (logits,) = run_onnx(tmp_path / "onnx", [line[:200] for line in lines])
    assert set(feed) == {"input_ids", "attention_mask"}
    with torch.no_grad():
        reference = model(**{k: torch.from_numpy(v) for k, v in feed.items()}, use_cache=False).logits.numpy()
    real = feed["attention_mask"].astype(bool)
    np.testing.assert_allclose(logits[real], reference[real], atol=FP32_TOLERANCE, rtol=0)


@pytest.mark.slow
def test_int8_agrees_with_pytorch_on_real_sentences(tmp_path):
    """Dynamic int8 quantization of a real (MiniLM, 2 of its layers) encoder: the predicted class
    agrees with fp32 PyTorch on real SST-2 sentences, and the file is much smaller."""
    from lmdistill.models.students import layer_subset
    from lmdistill.models.teacher import SHORTCUTS, _package_dir

    root = _package_dir(SHORTCUTS["minilm"][0])
    if root is None:
        pytest.skip("the packaged MiniLM (lmdistill[demo]) is not installed")
    torch.manual_seed(0)
    full = AutoModelForSequenceClassification.from_pretrained(root / "model", num_labels=2)
    student = layer_subset(full, [0, 3]).eval()
    student.save_pretrained(tmp_path / "student")
    AutoTokenizer.from_pretrained(root / "model").save_pretrained(tmp_path / "student")
    export(tmp_path / "student", tmp_path / "int8", "--quantize", "int8")
    texts = sst2_sentences(128)
    feed, (logits,) = run_onnx(tmp_path / "int8", texts)
    with torch.no_grad():
        reference = student(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    agreement = (logits.argmax(-1) == reference.argmax(-1)).mean()
    assert agreement >= 0.95, agreement
    assert np.abs(logits - reference).max() < 0.05  # int8 noise, not a different model
    size = (tmp_path / "int8" / "model.onnx").stat().st_size
    weights = (tmp_path / "student" / "model.safetensors").stat().st_size
    assert size < 0.4 * weights, (size, weights)
    assert json.loads((tmp_path / "int8" / "export.json").read_text())["quantize"] == "int8"


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------
def assert_user_error(argv, capsys, words) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lmdistill: error:"), err
    for word in words:
        assert word in err[0], err[0]


def test_export_of_a_folder_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")
    assert_user_error(["export", str(tmp_path / "notes"), "--out", str(tmp_path / "out")], capsys,
                      ["MODEL", "not a model folder"])
    assert_user_error(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "out")], capsys,
                      ["MODEL", "not a folder"])
    assert not (tmp_path / "out").exists()


def test_export_of_a_model_without_a_task_head(tiny_bert_dir, tmp_path, capsys):
    assert_user_error(["export", str(tiny_bert_dir), "--out", str(tmp_path / "out")], capsys,
                      ["MODEL", "BertModel", "task head"])
    assert not (tmp_path / "out").exists()


def test_export_of_a_head_whose_weights_are_missing(tiny_bert_dir, tmp_path, capsys):
    """A config that names a classifier over weights without one: transformers would make a random head."""
    folder = tmp_path / "headless"
    shutil.copytree(tiny_bert_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    (folder / "config.json").write_text(json.dumps(config))
    assert_user_error(["export", str(folder), "--out", str(tmp_path / "out")], capsys,
                      ["MODEL", "lacks", "classifier"])
    assert not (tmp_path / "out").exists()


def test_unknown_format_and_quantization(tiny_classifier_dir, tmp_path, capsys):
    assert_user_error(["export", str(tiny_classifier_dir), "--out", str(tmp_path / "out"), "--format", "tflite"],
                      capsys, ["--format", "tflite", "onnx"])
    assert_user_error(["export", str(tiny_classifier_dir), "--out", str(tmp_path / "out"), "--quantize", "int4"],
                      capsys, ["--quantize", "int4", "int8"])
    assert not (tmp_path / "out").exists()


def test_output_folder_rules(tiny_classifier_dir, classifier_export, tmp_path, capsys):
    # Someone's own folder: refused without --overwrite, and refused (not deleted) with it.
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("mine")
    assert_user_error(["export", str(tiny_classifier_dir), "--out", str(theirs)], capsys, ["--out", "--overwrite"])
    assert_user_error(["export", str(tiny_classifier_dir), "--out", str(theirs), "--overwrite"], capsys,
                      ["not an lmdistill export"])
    assert (theirs / "thesis.tex").read_text() == "mine" and len(list(theirs.iterdir())) == 1
    # An earlier export: refused without --overwrite, replaced with it.
    before = (classifier_export / "export.json").read_text()
    assert_user_error(["export", str(tiny_classifier_dir), "--out", str(classifier_export)], capsys, ["--overwrite"])
    assert (classifier_export / "export.json").read_text() == before
    # The model folder itself is never an output.
    assert_user_error(["export", str(tiny_classifier_dir), "--out", str(tiny_classifier_dir / "onnx")], capsys,
                      ["inside the model folder"])
    assert not (tiny_classifier_dir / "onnx").exists()


def test_overwrite_replaces_an_earlier_export(tiny_classifier_dir, classifier_export, tmp_path):
    out = tmp_path / "onnx"
    shutil.copytree(classifier_export, out)
    (out / "stale.txt").write_text("left by the first export")
    export(tiny_classifier_dir, out, "--overwrite")
    assert not (out / "stale.txt").exists() and (out / "model.onnx").is_file()


# ---- lmdistill eval on an export -----------------------------------------------------------------
def test_eval_scores_onnx_like_pytorch_and_compares_latency(tiny_classifier_dir, classifier_export, tmp_path,
                                                            capsys):
    config = sst2_config(tiny_classifier_dir, tmp_path / "unused", tmp_path / "cache")
    config["bench"] = {"repeats": 2, "warmup": 1, "rounds": 1, "batch_sizes": [1, 4], "memory": True}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))

    assert main(["eval", str(classifier_export), "--config", str(path)]) == 0
    onnx_alone = json.loads(capsys.readouterr().out)
    assert main(["eval", str(tiny_classifier_dir), "--config", str(path), "--compare-onnx",
                 str(classifier_export)]) == 0
    captured = capsys.readouterr()
    both = json.loads(captured.out)
    assert "| pytorch |" in captured.err and "| onnx |" in captured.err
    pytorch, onnx = both["pytorch"], both["onnx"]
    # Same metric code, same data: the fp32 export predicts what PyTorch predicts.
    assert onnx["metric"] == pytorch["metric"] == "accuracy"
    assert onnx["score"] == pytest.approx(pytorch["score"]) == pytest.approx(onnx_alone["score"])
    assert onnx["params"] == pytorch["params"]
    assert onnx["runtime"].startswith("onnxruntime") and pytorch["runtime"].startswith("pytorch")
    for entry in (pytorch, onnx):
        assert set(entry["latency_ms"]) == {"batch1", "batch4"} and all(v > 0 for v in entry["latency_ms"].values())
        assert entry["peak_mem_mb"] is not None and entry["peak_mem_mb"] > 0
    assert both["onnx_speedup"]["batch4"] == pytest.approx(
        pytorch["latency_ms"]["batch4"] / onnx["latency_ms"]["batch4"], rel=1e-2)
    assert not (tmp_path / "unused").exists()


def test_eval_of_an_export_for_another_task(tiny_classifier_dir, classifier_export, tmp_path, capsys):
    config = sst2_config(tiny_classifier_dir, tmp_path / "unused", tmp_path / "cache")
    config["task"] = {"kind": "token-classification", "train": str(DATA / "wikiann_en" / "train.txt"),
                      "eval": str(DATA / "wikiann_en" / "dev.txt"), "max_train_samples": 20, "max_eval_samples": 20}
    path = tmp_path / "ner.yaml"
    path.write_text(yaml.safe_dump(config))
    assert_user_error(["eval", str(classifier_export), "--config", str(path)], capsys,
                      ["MODEL", "AutoModelForSequenceClassification", "token-classification"])
