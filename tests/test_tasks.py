"""Task kinds beyond classification: token classification (NER), extractive QA, masked and causal LM.

End-to-end: `distill` with recipe kd on tiny models and real data slices (WikiANN, SQuAD v1.1,
WikiText-2). Unit tests: SQuAD EM/F1 and post-processing, first-subword label alignment, unseen
tags, and perplexity checked against an independent torch computation.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import DATA, sst2_config
from lmdistill.api import distill
from lmdistill.config import TaskConfig
from lmdistill.errors import DataError

BERT_TOKENIZER = DATA / "tokenizers" / "bert-base-uncased"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One thread here (the end-to-end runs also set training.num_threads: 1): the models are tiny, and on
    a busy 2-core machine two threads spin more than they work. The next test gets torch's count back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def task_config(teacher, out, cache, task: dict, batch_size: int = 16) -> dict:
    return sst2_config(
        teacher, out, cache, task=task,
        training={"epochs": 1, "batch_size": batch_size, "eval_batch_size": 32, "learning_rate": 1e-3,
                  "logging_steps": 1, "seed": 0, "num_threads": 1},
        bench={"repeats": 1, "warmup": 0, "batch_sizes": [1], "memory": False},
    )


def check_report(out, kind: str, metric: str) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == kind and report["recipe"] == "kd"
    for role in ("teacher", "student"):
        assert report[role]["metric"] == metric
        assert math.isfinite(report[role]["score"])
        assert metric in report[role]["metrics"]
    assert report["student"]["params"] < report["teacher"]["params"]
    return report


# ---- end to end -----------------------------------------------------------------------------
def test_ner_end_to_end(tiny_bert_dir, tmp_path, cache_dir):
    out = tmp_path / "ner"
    distill(task_config(tiny_bert_dir, out, cache_dir, {
        "kind": "token-classification", "format": "conll",
        "train": str(DATA / "wikiann_en" / "train.txt"), "eval": str(DATA / "wikiann_en" / "dev.txt"),
        "max_length": 32, "max_train_samples": 64, "max_eval_samples": 32,
    }))
    report = check_report(out, "token-classification", "f1")
    for key in ("precision", "recall", "accuracy"):
        assert 0.0 <= report["student"]["metrics"][key] <= 1.0
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(out / "student")
    tokenizer = AutoTokenizer.from_pretrained(out / "student")
    assert model.config.num_hidden_layers == 2
    assert set(model.config.id2label.values()) == {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"}
    logits = model(**tokenizer([["Anders", "visited", "Paris"]], is_split_into_words=True,
                               return_tensors="pt")).logits
    assert logits.shape[-1] == 7 and torch.isfinite(logits).all()


def test_qa_end_to_end(tiny_bert_dir, tmp_path, cache_dir):
    out = tmp_path / "qa"
    distill(task_config(tiny_bert_dir, out, cache_dir, {
        "kind": "question-answering",
        "train": str(DATA / "squad_v1.1" / "train-v1.1.University_of_Notre_Dame.json"),
        "eval": str(DATA / "squad_v1.1" / "dev-v1.1.Super_Bowl_50.json"),
        "max_length": 128, "doc_stride": 32, "max_train_samples": 32, "max_eval_samples": 16,
    }))
    report = check_report(out, "question-answering", "f1")
    for role in ("teacher", "student"):
        assert 0.0 <= report[role]["metrics"]["exact_match"] <= report[role]["metrics"]["f1"] <= 100.0
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    model = AutoModelForQuestionAnswering.from_pretrained(out / "student")
    tokenizer = AutoTokenizer.from_pretrained(out / "student")
    output = model(**tokenizer("Who won?", "The Broncos won.", return_tensors="pt"))
    assert output.start_logits.shape == output.end_logits.shape and torch.isfinite(output.start_logits).all()


def test_masked_lm_end_to_end(tiny_bert_dir, tmp_path, cache_dir):
    out = tmp_path / "mlm"
    distill(task_config(tiny_bert_dir, out, cache_dir, {
        "kind": "language-modeling",
        "train": str(DATA / "wikitext2" / "train.txt"), "eval": str(DATA / "wikitext2" / "eval.txt"),
        "block_size": 32, "max_train_samples": 6, "max_eval_samples": 6,
    }))
    report = check_report(out, "language-modeling", "perplexity")
    assert report["higher_is_better"] is False
    for role in ("teacher", "student"):
        metrics = report[role]["metrics"]
        assert metrics["perplexity"] == pytest.approx(math.exp(metrics["nll"]), rel=1e-6)
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(out / "student")
    assert model.config.num_hidden_layers == 2
    assert model(input_ids=torch.tensor([[101, 103, 102]])).logits.shape == (1, 3, 30522)


def test_causal_lm_end_to_end(tiny_llama_dir, tmp_path, cache_dir):
    out = tmp_path / "clm"
    distill(task_config(tiny_llama_dir, out, cache_dir, {
        "kind": "language-modeling",
        "train": str(DATA / "wikitext2" / "train.txt"), "eval": str(DATA / "wikitext2" / "eval.txt"),
        "block_size": 32, "max_train_samples": 6, "max_eval_samples": 4,
    }, batch_size=8))
    report = check_report(out, "language-modeling", "perplexity")
    assert report["teacher_info"]["finetuned"] is False  # a causal LM's head is already trained
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "student")
    assert model.config.num_hidden_layers == 2
    assert torch.isfinite(model(input_ids=torch.tensor([[464, 3290, 318]])).logits).all()


# ---- question answering ---------------------------------------------------------------------
def test_squad_normalisation_and_scores():
    from lmdistill.tasks.question_answering import exact_match_score, f1_score, normalize_answer, squad_scores

    assert normalize_answer("  The Denver Broncos!  ") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theatre") == "theatre"  # articles only as whole words
    assert exact_match_score("Denver Broncos.", "the denver broncos") == 1.0
    assert exact_match_score("Broncos", "Denver Broncos") == 0.0
    # pred {denver, broncos, team} vs gold {denver, broncos}: P = 2/3, R = 1, F1 = 2PR/(P+R) = 0.8
    assert f1_score("Denver Broncos team", "the Denver Broncos") == pytest.approx(0.8)
    assert f1_score("Carolina", "Denver Broncos") == 0.0
    assert f1_score("a", "the") == 0.0  # both normalise to nothing
    scores = squad_scores(
        {"q1": "Denver Broncos", "q2": "the Panthers team"},
        {"q1": ["Broncos", "Denver Broncos"], "q2": ["Carolina Panthers", "Panthers"]},
    )
    # q1: EM 1, F1 1. q2: best gold "Panthers": P = 1/2, R = 1, F1 = 2/3; EM 0.
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_qa_postprocessing_picks_the_best_valid_span():
    from lmdistill.tasks.question_answering import postprocess

    context = "The Broncos beat the Panthers in 2016 at Levi's Stadium."
    words = ["The", "Broncos", "beat", "the", "Panthers", "in", "2016", "at", "Levi's", "Stadium."]
    spans, pos = [], 0
    for w in words:
        pos = context.index(w, pos)
        spans.append([pos, pos + len(w)])
        pos += len(w)
    question = [[-1, -1]] * 3  # [CLS], one question token, [SEP]
    # Window 1: tokens 0-5 of the context; window 2: tokens 4-9 (overlapping).
    offsets1 = question + spans[0:6] + [[-1, -1]]
    offsets2 = question + spans[4:10] + [[-1, -1]]
    start1 = torch.full((len(offsets1),), -5.0)
    end1 = torch.full((len(offsets1),), -5.0)
    start1[1], end1[1] = 50.0, 50.0  # the question token: highest, but not context, so never chosen
    start1[3 + 4], end1[3 + 4] = 3.0, 3.0  # "Panthers" in window 1: score 6
    start2 = torch.full((len(offsets2),), -5.0)
    end2 = torch.full((len(offsets2),), -5.0)
    start2[3 + 2], end2[3 + 2] = 4.0, 1.0  # "2016" start ...
    end2[3 + 5] = 3.5  # ... to "Stadium.": "2016 at Levi's Stadium." scores 7.5, the best
    end2[3 + 1] = 9.0  # "in" ends before the "2016" start: an invalid span whatever its score
    answers = postprocess([start1.numpy(), start2.numpy()], [end1.numpy(), end2.numpy()], ["q", "q"],
                          [offsets1, offsets2], {"q": context, "other": "no windows"})
    assert answers == {"q": "2016 at Levi's Stadium.", "other": ""}
    # A span longer than max_answer_tokens is refused: with a limit of 2 tokens, "Panthers" wins.
    answers = postprocess([start1.numpy(), start2.numpy()], [end1.numpy(), end2.numpy()], ["q", "q"],
                          [offsets1, offsets2], {"q": context}, max_answer_tokens=2)
    assert answers == {"q": "Panthers"}


def test_qa_logit_pairs_push_padding_down():
    from lmdistill.models.features import Features
    from lmdistill.tasks.question_answering import PAD_LOGIT, QuestionAnsweringTask

    student, teacher = torch.randn(2, 5, 2), torch.randn(2, 5, 2)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    features = Features(student, (), None, mask, None)
    pairs = QuestionAnsweringTask.logit_pairs(None, student, teacher, features)
    assert len(pairs) == 2
    for k, (s, t) in enumerate(pairs):
        assert s.shape == t.shape == (2, 5)
        assert torch.equal(s[0], student[0, :, k]) and torch.equal(t[1, :3], teacher[1, :3, k])
        assert (s[1, 3:] == PAD_LOGIT).all() and (t[1, 3:] == PAD_LOGIT).all()


def test_qa_windows_hold_the_answer(tmp_path):
    from transformers import BertTokenizer

    from lmdistill.tasks.question_answering import QuestionAnsweringTask

    squad = str(DATA / "squad_v1.1" / "train-v1.1.University_of_Notre_Dame.json")
    task = QuestionAnsweringTask(TaskConfig(kind="question-answering", train=squad, eval=squad, max_length=64,
                                            doc_stride=16, max_train_samples=8, max_eval_samples=8))
    tokenizer = BertTokenizer.from_pretrained(BERT_TOKENIZER)
    train = task.tokenize("train", task.raw_train, tokenizer, 64)
    answers = [a["text"][0] for a in task.raw_train["answers"]]
    assert len(train) > len(answers)  # long contexts were cut into several windows
    hits = 0
    encoded, _ = task._encode(task.raw_train, tokenizer, 64)
    for i, row in enumerate(train):
        if row["start_positions"] == 0:
            continue
        hits += 1
        ids = row["input_ids"][row["start_positions"]:row["end_positions"] + 1]
        gold = answers[encoded["overflow_to_sample_mapping"][i]]
        assert tokenizer.decode(ids).replace(" ", "") == gold.lower().replace(" ", "")
    assert hits >= len(answers)  # every answer lies wholly in at least one window
    evaluation = task.tokenize("eval", task.raw_eval, tokenizer, 64)
    assert {"_example_id", "_offset_mapping"} <= set(evaluation.column_names)
    assert "_example_id" not in task.model_inputs(evaluation)


# ---- token classification -------------------------------------------------------------------
def write_conll(path, sentences) -> str:
    path.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in s) for s in sentences) + "\n", encoding="utf-8")
    return str(path)


SENTENCES = [
    [("Anders", "B-PER"), ("Lindström", "I-PER"), ("visited", "O"), ("Paris", "B-LOC")],
    [("Saunders", "B-ORG"), ("River", "I-ORG"), ("(", "O")],
]


def ner_task(tmp_path, eval_sentences=SENTENCES):
    from lmdistill.tasks.token_classification import TokenClassificationTask

    train = write_conll(tmp_path / "train.conll", SENTENCES)
    dev = write_conll(tmp_path / "dev.conll", eval_sentences)
    return TokenClassificationTask(TaskConfig(kind="token-classification", train=train, eval=dev))


def test_labels_sit_on_the_first_subword(tmp_path):
    from transformers import BertTokenizer

    task = ner_task(tmp_path)
    assert task.labels == sorted({"B-PER", "I-PER", "O", "B-LOC", "B-ORG", "I-ORG"})
    tokenizer = BertTokenizer.from_pretrained(BERT_TOKENIZER)
    row = task.tokenize("train", task.raw_train, tokenizer, 32)[0]
    tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    word_ids = tokenizer(["Anders", "Lindström", "visited", "Paris"], is_split_into_words=True).word_ids()
    assert word_ids.count(1) > 1  # "Lindström" is several subwords: the case that matters
    expected = []
    for i, word in enumerate(word_ids):
        first = word is not None and (i == 0 or word_ids[i - 1] != word)
        expected.append(task.label2id[SENTENCES[0][word][1]] if first else -100)
    assert row["labels"] == expected
    names = [task.labels[x] if x != -100 else None for x in row["labels"]]
    assert [n for n in names if n] == ["B-PER", "I-PER", "O", "B-LOC"]
    assert names[0] is None and names[-1] is None  # [CLS], [SEP]
    # Truncation keeps the labels aligned with what is left.
    short = task.tokenize("train", task.raw_train, tokenizer, 4)[0]
    assert len(short["input_ids"]) == len(short["labels"]) == 4


def test_unseen_eval_tag_is_a_one_line_data_error(tmp_path):
    with pytest.raises(DataError) as err:
        ner_task(tmp_path, [[("Bonn", "B-MISC"), ("is", "O")]])
    message = str(err.value)
    assert "B-MISC" in message and "dev.conll" in message and "'tags'" in message and "\n" not in message


def test_missing_column_and_txt_means_conll(tmp_path):
    from lmdistill.tasks.token_classification import TokenClassificationTask

    # For token classification a .txt file is CoNLL (WikiANN ships as .txt).
    text = tmp_path / "ner.txt"
    text.write_text("Anders B-PER\nLindstrom I-PER\n\nBonn B-LOC\nis O\n", encoding="utf-8")
    task = TokenClassificationTask(TaskConfig(kind="token-classification", train=str(text), eval=str(text)))
    assert task.raw_train.column_names == ["tokens", "tags"] and len(task.raw_train) == 2
    # Read as plain text on purpose, the tokens column is missing and the hint says how to fix it.
    with pytest.raises(DataError, match="no column 'tokens'.*task.format: conll"):
        TokenClassificationTask(TaskConfig(kind="token-classification", train=str(text), eval=str(text),
                                           format="text"))
    conll = write_conll(tmp_path / "t.conll", SENTENCES)
    with pytest.raises(DataError, match="no column 'words'.*task.text"):
        TokenClassificationTask(TaskConfig(kind="token-classification", train=conll, eval=conll, text="words"))


def test_ner_metrics_are_entity_level():
    from lmdistill.tasks.token_classification import entity_scores

    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "O", "O", "B-LOC"]]  # PER cut short: wrong entity; LOC right
    scores = entity_scores(gold, pred)
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(0.5) and scores["accuracy"] == pytest.approx(0.75)


# ---- language modelling ---------------------------------------------------------------------
def lm_task(**task):
    from lmdistill.tasks.language_modeling import LanguageModelingTask

    wiki = DATA / "wikitext2"
    return LanguageModelingTask(TaskConfig(kind="language-modeling", train=str(wiki / "train.txt"),
                                           eval=str(wiki / "eval.txt"), **task))


def test_causal_perplexity_matches_torch(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    task = lm_task(block_size=24, max_train_samples=2, max_eval_samples=4)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    task.bind(model.config)
    assert task.auto_class() is AutoModelForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    result = task.evaluate(model, tokenizer, batch_size=3)
    blocks = torch.tensor(list(task.eval_dataset(tokenizer, model.config)["input_ids"]))
    assert blocks.shape[1] == 24 and len(blocks) > 3  # several batches, the last one partial
    with torch.no_grad():
        losses = [F.cross_entropy(model(input_ids=b[None]).logits[0, :-1], b[1:], reduction="none") for b in blocks]
    expected = torch.cat(losses).mean().exp().item()
    assert result["metric"] == "perplexity"
    assert result["score"] == pytest.approx(expected, rel=1e-4)


def test_masked_eval_blocks_are_masked_once_and_deterministically(tiny_bert_dir):
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    first, second = lm_task(block_size=32, max_eval_samples=4), lm_task(block_size=32, max_eval_samples=4)
    for task in (first, second):
        task.bind(AutoConfig.from_pretrained(tiny_bert_dir))
    assert first.auto_class() is AutoModelForMaskedLM
    a, b = first.eval_dataset(tokenizer), second.eval_dataset(tokenizer)
    assert a["input_ids"][:] == b["input_ids"][:] and a["labels"][:] == b["labels"][:]
    labels = torch.tensor(list(a["labels"]))
    ids = torch.tensor(list(a["input_ids"]))
    assert ids.shape[1] == 32 and (ids[:, 0] == tokenizer.cls_token_id).all()
    assert (labels[:, 0] == -100).all() and (labels[:, -1] == -100).all()  # [CLS] / [SEP] never masked
    share = (labels != -100).float().mean().item()
    assert 0.05 < share < 0.3
    assert (ids[labels != -100] == tokenizer.mask_token_id).float().mean() > 0.5
    # Training blocks are unmasked; the collator masks them anew.
    train = first.train_dataset(tokenizer)
    assert "labels" not in train.column_names
    batch = first.collator(tokenizer)([train[0], train[1]])
    assert batch["labels"].shape == (2, 32) and (batch["labels"] == -100).any()


def test_lm_type_auto_follows_the_config():
    from transformers import BertConfig, GPT2Config, LlamaConfig

    from lmdistill.tasks.language_modeling import resolve_lm_type

    assert resolve_lm_type(BertConfig()) == "masked"
    assert resolve_lm_type(LlamaConfig()) == "causal"
    assert resolve_lm_type(GPT2Config(architectures=["GPT2Model"])) == "causal"
    assert resolve_lm_type(BertConfig(is_decoder=True)) == "causal"
    assert resolve_lm_type(BertConfig(architectures=["BertForMaskedLM"])) == "masked"
