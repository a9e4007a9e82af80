"""Long documents: NER windows scored over whole documents, the windowed teacher, the brat reader,
bad input for efficient students, and an end-to-end run on a real LitBank document."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForTokenClassification,
    BertConfig,
    BertForQuestionAnswering,
    BertForTokenClassification,
    BertTokenizer,
)

from conftest import DATA, sst2_config
from lmdistill.api import distill
from lmdistill.config import TaskConfig
from lmdistill.models.windowed import WindowedTeacher
from lmdistill.tasks.io import load_split
from lmdistill.tasks.token_classification import IGNORE, TokenClassificationTask
from lmdistill.tasks.windows import merge_word_predictions
from test_bad_input import assert_one_line_error, run_cli

LITBANK = DATA / "litbank"


def litbank_task(max_length: int) -> TokenClassificationTask:
    cfg = TaskConfig(kind="token-classification", train=str(LITBANK / "train"), eval=str(LITBANK / "test"),
                     max_length=max_length, doc_stride=32)
    return TokenClassificationTask(cfg)


def test_brat_reader_keeps_outermost_mentions():
    data = load_split(str(LITBANK / "test"), "task.eval")
    tokens, tags = data[0]["tokens"], data[0]["tags"]
    assert len(tokens) == len(tags) == 2014  # the .txt split on whitespace
    assert sum(t.startswith("B-") for t in tags) == 124  # outermost mentions of the 140 in the .ann
    text = (LITBANK / "test" / "271_black_beauty_brat.txt").read_text()
    assert tokens == text.split()


def test_windowed_ner_scores_every_gold_entity():
    """A 2,077-token document read in 128-token windows: oracle predictions per window (each window's
    own gold labels) merge back into the whole document, so every gold entity is found (F1 1.0);
    truncating at 128 tokens, as before, could have found at most the first few."""
    task = litbank_task(128)
    tokenizer = BertTokenizer.from_pretrained(DATA / "tokenizers" / "bert-base-uncased")
    dataset = task.eval_dataset(tokenizer)
    assert len(dataset) > 15 and set(dataset["_doc"]) == {0}
    assert max(len(ids) for ids in dataset["input_ids"]) == 128
    outputs = [[[label if label != IGNORE else 0 for label in row] for row in dataset["labels"]]]
    scores = task.compute_metrics(outputs, dataset, task.raw_eval)
    assert scores["f1"] == 1.0 and scores["recall"] == 1.0 and scores["accuracy"] == 1.0
    first_window_entities = sum(1 for label in dataset[0]["labels"] if label != IGNORE
                                and task.labels[label].startswith("B-"))
    assert first_window_entities < 10  # what one truncated window could have scored, of 124


def test_windows_scored_alone_without_their_documents():
    """Training windows (no document columns; LAD's length search scores them) are scored each on its own
    labelled positions: oracle predictions give F1 1.0, and one entity's B- tag turned to O costs it."""
    task = litbank_task(128)
    tokenizer = BertTokenizer.from_pretrained(DATA / "tokenizers" / "bert-base-uncased")
    dataset = task.train_dataset(tokenizer)
    assert "_doc" not in dataset.column_names
    windows = [[label if label != IGNORE else 0 for label in row] for row in dataset["labels"]]
    assert task.compute_metrics([windows], dataset, None)["f1"] == 1.0
    row, k = next((r, k) for r, labels in enumerate(dataset["labels"]) for k, label in enumerate(labels)
                  if label != IGNORE and task.labels[label].startswith("B-"))
    windows[row][k] = task.labels.index("O")
    scores = task.compute_metrics([windows], dataset, None)
    assert scores["precision"] < 1.0 or scores["recall"] < 1.0


def test_centre_of_a_window_wins():
    """Two windows over 10 words overlap on words 4-7; each word takes the window where it is farther
    from an edge (document edges do not count as edges)."""
    first = [-1, 0, 1, 2, 3, 4, 5, 6, 7, -1]  # [CLS] words 0-7 [SEP]
    second = [-1, 4, 5, 6, 7, 8, 9, -1]  # [CLS] words 4-9 [SEP]
    scores_first = [-1, 10**6, 10**6, 10**6, 10**6, 3, 2, 1, 0, -1]  # doc start is far; its right edge at word 7
    scores_second = [-1, 0, 1, 2, 3, 10**6, 10**6, -1]
    preds = [[0, 1, 1, 1, 1, 1, 1, 1, 1, 0], [0, 2, 2, 2, 2, 2, 2, 0]]
    merged = merge_word_predictions(preds, [0, 0], [first, second], [scores_first, scores_second], [11])
    # words 4, 5 from the first window (scores 3, 2 vs 0, 1); 6, 7 from the second; word 10 in no window
    assert merged == [[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, -1]]


def test_windowed_teacher_merges_by_window_centre():
    """Independent check: for every position, the merged output equals the teacher's output on the one
    window in which that position is most central, computed here from the window formula."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    teacher = BertForTokenClassification(config).eval()
    ids = torch.randint(5, 300, (2, 200))
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    mask[1, 150:] = 0
    ids[1, 150:] = 0
    with torch.no_grad():
        merged = WindowedTeacher(teacher, 64, 16)(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert merged.logits.shape == (2, 200, 3) and len(merged.hidden_states) == 3
    for row, length in ((0, 200), (1, 150)):
        body = list(range(1, length - 1))
        size, step, windows, start = 62, 46, [], 0
        while True:
            windows.append((start, min(start + size, len(body))))
            if windows[-1][1] == len(body):
                break
            start += step
        for i in (0, 30, 50, 60, 100, len(body) - 1):
            def centre(span):
                s, e = span
                return min(i - s if s > 0 else 10**6, e - 1 - i if e < len(body) else 10**6)
            s, e = max((w for w in windows if w[0] <= i < w[1]), key=centre)
            window_ids = torch.cat([ids[row, :1], ids[row, 1 + s:1 + e], ids[row, length - 1:length]])[None]
            with torch.no_grad():
                alone = teacher(input_ids=window_ids, output_hidden_states=True)
            position, offset = 1 + i, 1 + i - s
            torch.testing.assert_close(merged.logits[row, position], alone.logits[0, offset], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(merged.hidden_states[2][row, position], alone.hidden_states[2][0, offset],
                                       atol=1e-4, rtol=1e-4)
        assert merged.logits[1, 150:].abs().max() == 0  # padding stays zero


def test_windowed_qa_teacher_takes_cls_from_the_lowest_null_score():
    """Question answering: the merged [CLS] start/end logits are those of the window whose [CLS] start + end
    is lowest (SQuAD v2's null score), not the first window's; every other position keeps its owner's."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    teacher = BertForQuestionAnswering(config).eval()
    ids = torch.randint(5, 300, (2, 240))
    ids[:, 0], ids[:, 6], ids[:, -1] = 1, 2, 2
    types = torch.zeros_like(ids)
    types[:, 7:] = 1
    mask = torch.ones_like(ids)
    mask[1, 180:], ids[1, 180:], types[1, 180:] = 0, 0, 0
    ids[1, 179] = 2
    windowed = WindowedTeacher(teacher, 64, 16, pair=True)
    with torch.no_grad():
        merged = windowed(input_ids=ids, attention_mask=mask, token_type_ids=types)
    picks = []
    for row, length in ((0, 240), (1, 180)):
        question, body = list(range(7)), list(range(7, length - 1))
        size, step, nulls, windows, start = 64 - 8, 64 - 8 - 16, [], [], 0
        while True:  # the window formula: question + body[start:start + size] + final [SEP]
            windows.append(question + body[start:start + size] + [length - 1])
            if start + size >= len(body):
                break
            start += step
        assert len(windows) >= 3
        with torch.no_grad():
            outs = [teacher(input_ids=ids[row, w][None], token_type_ids=types[row, w][None]) for w in windows]
        nulls = [float(o.start_logits[0, 0] + o.end_logits[0, 0]) for o in outs]
        lowest = outs[nulls.index(min(nulls))]
        picks.append(nulls.index(min(nulls)))
        torch.testing.assert_close(merged.start_logits[row, 0], lowest.start_logits[0, 0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(merged.end_logits[row, 0], lowest.end_logits[0, 0], atol=1e-4, rtol=1e-4)
        # a question token still comes from the first window, the final [SEP] from the last
        torch.testing.assert_close(merged.start_logits[row, 3], outs[0].start_logits[0, 3], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(merged.end_logits[row, length - 1], outs[-1].end_logits[0, -1], atol=1e-4,
                                   rtol=1e-4)
    assert any(picks), picks  # the rule matters here: some row's lowest null is not in its first window


def test_windowed_teacher_outputs_are_cached_per_row(tmp_path):
    """The teacher-output cache's pass runs the windowed teacher on batches sorted by length; a training
    batch (other rows, another order, other padding) reads back exactly what the live windowed teacher
    gives on that batch. Other window settings are another cache entry."""
    import datasets
    from transformers import DataCollatorWithPadding

    from lmdistill import cache
    from lmdistill.recipes.base import Needs, Stage

    torch.manual_seed(0)
    config = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    teacher = BertForTokenClassification(config).eval()
    lengths = [200, 40, 150, 64, 97, 180]  # shorter and longer than the teacher's 64 positions
    rows = [[1] + torch.randint(5, 300, (n - 2,)).tolist() + [2] for n in lengths]
    dataset = datasets.Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * n for n in lengths]})
    collator = DataCollatorWithPadding(BertTokenizer.from_pretrained(DATA / "tokenizers" / "bert-base-uncased"))
    stage = Stage("kd", lambda *a: None, teacher_needs=Needs(logits=True, hidden_states=(2,)))
    windowed = WindowedTeacher(teacher, 64, 16)
    reader = cache.prepare(stage, windowed, dataset, collator, tmp_path, 8, "float32", batch_size=4)
    assert reader.info.status == "built"
    pick = [4, 0, 3, 1]  # a training batch: padded to 200, rows 97/200/64/40 tokens long
    batch = collator([{k: dataset[i][k] for k in ("input_ids", "attention_mask")} for i in pick])
    cached = reader.features(torch.tensor(pick), batch)
    with torch.no_grad():
        live = windowed(**batch, output_hidden_states=True)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(cached.logits[real], live.logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached.hidden_states[2][real], live.hidden_states[2][real], atol=1e-5, rtol=1e-5)
    # The plain teacher on a long row would be wrong (it cannot even read it); a cached entry of another
    # windowing must never be read for this one.
    other = cache.prepare(stage, WindowedTeacher(teacher, 64, 8), dataset, collator, tmp_path, 8, "float32", 4)
    assert other.info.status == "built" and other.folder != reader.folder
    again = cache.prepare(stage, WindowedTeacher(teacher, 64, 16), dataset, collator, tmp_path, 8, "float32", 4)
    assert again.info.status == "reused" and again.folder == reader.folder


def test_end_to_end_efficient_student_on_litbank(tiny_bert_dir, tmp_path, cache_dir):
    """A tiny 128-position BERT teacher and a 2-layer LSG student reading 512-token windows of a real
    LitBank document: the teacher reads them in windows for KD, both are scored on the whole test
    document, the report has the cost against length, and the saved student loads with
    AutoModelForTokenClassification."""
    config = {
        "teacher": {"path": str(tiny_bert_dir), "epochs": 1, "learning_rate": 1e-3},
        "student": {"layers": [0, 2], "attention": {"type": "lsg", "block_size": 64, "max_length": 512}},
        "task": {"kind": "token-classification", "train": str(LITBANK / "train"), "eval": str(LITBANK / "test"),
                 "max_length": 512},
        "recipe": {"name": "kd", "temperature": 2.0, "alpha": 0.5},
        "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1, "seed": 0},
        "bench": {"batch_sizes": [1], "repeats": 1, "rounds": 1, "warmup": 0, "memory": False, "lengths": [128, 512]},
        "output": str(tmp_path / "out"),
        "cache_dir": str(cache_dir),
    }
    result = distill(config)
    report = result.report
    assert "lsg attention" in report["student_description"]
    assert report["stages"][0]["steps"] == 2  # 2 documents of ~2,200 tokens: 10 windows of 512, batches of 8
    for role in ("teacher", "student"):
        assert 0.0 <= report[role]["score"] <= 1.0
    rows = report["cost_vs_length"]  # teacher (sdpa, eager), full-attention student (sdpa, eager), LSG student
    assert len(rows) == 10 and {r["length"] for r in rows} == {128, 512}
    assert all(r["latency_ms"] > 0 for r in rows)
    for name in ("cost_vs_length.png", "cost_vs_length.md", "cost_vs_length.json"):
        assert (result.output / name).is_file()
    assert "Cost against sequence length" in (result.output / "report.md").read_text()
    import lmdistill.models.lsg  # noqa: F401  (registration, as the README says)

    student = AutoModelForTokenClassification.from_pretrained(result.student_dir)
    assert type(student).__name__ == "LSGBertForTokenClassification"
    assert student.config.max_position_embeddings == 512


# ---- bad input: one line, exit 2, nothing written ---------------------------------------------------------
def efficient_config(teacher, tmp_path, cache_dir, attention):
    config = sst2_config(teacher, tmp_path / "out", cache_dir)
    config["student"] = {"layers": [0, 2], "attention": attention}
    return config


def test_bad_attention_settings(tiny_bert_dir, tmp_path, cache_dir, capsys):
    cases = [
        ({"type": "reformer"}, "student.attention: unknown attention type 'reformer' (choose from: full, longformer"),
        ({"type": "longformer", "window": 1024, "max_length": 512}, "window 1024 is larger than max_length 512"),
        ({"type": "longformer", "window": 101, "max_length": 512}, "Longformer's attention_window must be even"),
        ({"type": "bigbird", "max_length": 512}, "(5 + 2 x num_random_blocks) x block_size = 704"),
        ({"type": "nystromformer", "num_landmarks": 48, "max_length": 512}, "multiple of num_landmarks"),
        ({"type": "lsg", "block_size": 32, "max_length": 64}, "64 is below the teacher's 128 positions"),
    ]
    for attention, fragment in cases:
        code, err = run_cli(efficient_config(tiny_bert_dir, tmp_path, cache_dir, attention), tmp_path, capsys)
        assert_one_line_error(code, err, fragment)
        assert not (tmp_path / "out").exists()


def test_token_pruning_recipes_need_a_full_attention_student(tiny_bert_dir, tmp_path, cache_dir, capsys):
    """lad / lengthdrop swap in the prunable BERT: an efficient-attention student has none."""
    config = efficient_config(tiny_bert_dir, tmp_path, cache_dir, {"type": "lsg", "block_size": 64, "max_length": 256})
    config["recipe"] = {"name": "lengthdrop"}
    code, err = run_cli(config, tmp_path, capsys)
    assert_one_line_error(code, err, "LSGBertForSequenceClassification", "no prunable implementation")
    assert not (tmp_path / "out").exists()


def test_attention_for_an_architecture_we_cannot_convert(tiny_llama_dir, tmp_path, cache_dir, capsys):
    config = efficient_config(tiny_llama_dir, tmp_path, cache_dir, {"type": "longformer", "window": 64})
    code, err = run_cli(config, tmp_path, capsys)
    assert_one_line_error(code, err, "cannot convert a llama model", "supported: BERT-family encoders")
    assert not (tmp_path / "out").exists()


def test_brat_entity_outside_the_text(tiny_bert_dir, tmp_path, cache_dir, capsys):
    folder = tmp_path / "brat"
    folder.mkdir()
    (folder / "doc.txt").write_text("Tom went to London .\n")
    (folder / "doc.ann").write_text("T1\tPER 0 3\tTom\nT2\tGPE 12 40\tLondon .\n")
    config = sst2_config(tiny_bert_dir, tmp_path / "out", cache_dir)
    config["task"] = {"kind": "token-classification", "train": str(folder), "eval": str(folder)}
    code, err = run_cli(config, tmp_path, capsys)
    assert_one_line_error(code, err, "doc.ann:2: entity T2 span 12-40 is outside the text (21 characters")
    assert not (tmp_path / "out").exists()


def test_general_corpus_stage_before_the_task(tiny_bert_dir, tmp_path, cache_dir):
    """`student.general`: a label-free stage on raw text (long 512-token and short 128-token passages) in
    which the LSG student matches the pretrained teacher's hidden states (cosine), the teacher reading
    the long passages in windows; then the recipe's own stage. (The teacher's task head is left
    untrained: this stage reads the pretrained teacher, and the end-to-end test fine-tunes one.)"""
    config = {
        "teacher": {"path": str(tiny_bert_dir), "finetune": "never"},
        "student": {"layers": [0, 2], "attention": {"type": "lsg", "block_size": 64, "max_length": 512},
                    "general": {"corpus": [str(LITBANK / "train" / "*.txt")], "max_tokens": 3000, "short_length": 128,
                                "short_fraction": 0.4, "batch_size": 4}},
        "task": {"kind": "token-classification", "train": str(LITBANK / "train"), "eval": str(LITBANK / "test"),
                 "max_length": 512},
        "recipe": {"name": "kd"},
        "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1, "seed": 0},
        "bench": {"enabled": False},
        "output": str(tmp_path / "out"),
        "cache_dir": str(cache_dir),
    }
    report = distill(config).report
    general, task_stage = report["stages"]
    assert general["stage"] == "general" and task_stage["stage"] == "kd"
    assert general["teacher_cache"]["status"] == "built"  # the windowed pretrained teacher, cached
    # 3,000 tokens: 60% in 512-token blocks (3 blocks), 40% in 128-token blocks (9 blocks); batches of 4
    assert general["steps"] == 3
    assert 0 < general["train_loss"] < 2  # 1 - cosine, averaged


def test_general_corpus_that_matches_nothing(tiny_bert_dir, tmp_path, cache_dir, capsys):
    config = efficient_config(tiny_bert_dir, tmp_path, cache_dir, {"type": "lsg", "block_size": 64, "max_length": 256})
    config["student"]["general"] = {"corpus": ["books/*.txt"]}
    code, err = run_cli(config, tmp_path, capsys)
    assert_one_line_error(code, err, "student.general.corpus: 'books/*.txt' matches no file")
    assert not (tmp_path / "out").exists()


def test_long_context_qa_with_an_efficient_student(tiny_bert_dir, tmp_path, cache_dir):
    """COVID-QA articles (1,000-1,500 tokens): the Longformer student (global attention on the question)
    reads 512-token windows, the 128-position teacher reads each of them in its own windows with the
    question repeated; both are scored on the whole article."""
    config = {
        "teacher": {"path": str(tiny_bert_dir), "epochs": 1, "learning_rate": 1e-3},
        "student": {"layers": [0, 2], "attention": {"type": "longformer", "window": 64, "max_length": 512}},
        "task": {"kind": "question-answering", "train": str(DATA / "covid_qa" / "train.json"),
                 "eval": str(DATA / "covid_qa" / "dev.json"), "max_length": 512, "doc_stride": 32,
                 "max_answer_tokens": 100, "max_train_samples": 2},
        "recipe": {"name": "kd", "temperature": 2.0, "alpha": 0.5},
        "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1, "seed": 0},
        "bench": {"enabled": False},
        "output": str(tmp_path / "out"),
        "cache_dir": str(cache_dir),
    }
    from lmdistill.config import load_config
    from lmdistill.tasks import build_task

    task = build_task(load_config(config).task)
    tokenizer = BertTokenizer.from_pretrained(tiny_bert_dir)
    student_config = BertConfig(max_position_embeddings=512)
    teacher_config = BertConfig(max_position_embeddings=128)
    student_windows = len(task.eval_dataset(tokenizer, student_config))
    teacher_windows = len(task.eval_dataset(tokenizer, teacher_config))
    assert 4 <= student_windows < teacher_windows  # 4 questions on one article of 1,079 tokens
    report = distill(config).report
    assert report["stages"][0]["steps"] >= 1
    assert report["stages"][0]["teacher_cache"]["status"] == "built"  # the windowed teacher's outputs, cached
    for role in ("teacher", "student"):
        assert 0.0 <= report[role]["score"] <= 100.0


def test_a_brat_folder_is_hashed_by_content(tmp_path):
    """--resume compares the data's hashes: a brat folder's are those of its files, so an edited .ann is a
    different data set (not just the same folder name)."""
    from lmdistill.config import load_config
    from lmdistill.run_folder import data_hashes

    folder = tmp_path / "brat"
    folder.mkdir()
    (folder / "doc.txt").write_text("Tom went to London .\n")
    (folder / "doc.ann").write_text("T1\tPER 0 3\tTom\n")
    config = load_config({"student": {"layers": [0]}, "recipe": {"name": "kd"}, "output": str(tmp_path / "out"),
                          "task": {"kind": "token-classification", "train": str(folder), "eval": str(folder)}})
    before = data_hashes(config, lambda source: tmp_path / source)
    (folder / "doc.ann").write_text("T1\tPER 0 3\tTom\nT2\tGPE 12 18\tLondon\n")
    after = data_hashes(config, lambda source: tmp_path / source)
    assert before["task.train"] != after["task.train"] and before["task.eval"] != after["task.eval"]
