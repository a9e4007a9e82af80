"""Shared fixtures: tiny models built from configs (fast), real data slices from data/, offline hub."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """Tests that set training.num_threads change torch's process-wide thread count: restore it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _tiny_bert(folder: Path, model_class) -> Path:
    """A 4-layer, 32-wide BERT of `model_class`, seeded, with the real uncased WordPiece tokenizer."""
    from transformers import BertConfig, BertTokenizer

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    model_class(config).save_pretrained(folder)
    BertTokenizer.from_pretrained(DATA / "tokenizers" / "bert-base-uncased").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny BERT with no task head (see _tiny_bert)."""
    from transformers import BertModel

    return _tiny_bert(tmp_path_factory.mktemp("tiny-bert"), BertModel)


@pytest.fixture(scope="session")
def tiny_bert_mlm_dir(tmp_path_factory) -> Path:
    """A tiny BertForMaskedLM (tied LM head; see _tiny_bert)."""
    from transformers import BertForMaskedLM

    return _tiny_bert(tmp_path_factory.mktemp("tiny-bert-mlm"), BertForMaskedLM)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 4-layer, 32-wide Llama causal LM with the real GPT-2 byte-level BPE tokenizer."""
    from transformers import GPT2Tokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50257, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=50256, eos_token_id=50256)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer = GPT2Tokenizer.from_pretrained(DATA / "tokenizers" / "gpt2")
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def sst2_config(teacher: Path | str, output: Path, cache: Path, **sections) -> dict:
    """A small, fast SST-2 experiment on real data slices. `sections` replace whole sections."""
    config = {
        "teacher": {"path": str(teacher), "epochs": 1, "learning_rate": 1e-3},
        "student": {"layers": [0, 2]},
        "task": {
            "kind": "classification",
            "train": str(DATA / "sst2" / "train.tsv"),
            "eval": str(DATA / "sst2" / "dev.tsv"),
            "text": "sentence",
            "label": "label",
            "max_length": 32,
            "max_train_samples": 64,
            "max_eval_samples": 32,
        },
        "recipe": {"name": "kd", "temperature": 2.0, "alpha": 0.5},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "logging_steps": 1, "seed": 0},
        "bench": {"repeats": 2, "warmup": 1, "batch_sizes": [1, 4], "memory": False},
        "output": str(output),
        "cache_dir": str(cache),
    }
    config.update(sections)
    return config


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory) -> Path:
    """A tiny BERT with an SST-2-shaped head (labels "0", "1") and no dropout: needs no fine-tuning,
    and runs are deterministic, which the resume and distributed tests compare against."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-classifier")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, classifier_dropout=0.0, num_labels=2,
                        id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1})
    BertForSequenceClassification(config).save_pretrained(folder)
    BertTokenizer.from_pretrained(DATA / "tokenizers" / "bert-base-uncased").save_pretrained(folder)
    return folder
