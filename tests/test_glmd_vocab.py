"""GLMD vocabulary compression: ranking, substitutes, the kept-column KL, model surgery, the rewritten
tokenizer, and `lmdistill compress-vocab` (plain transformers can load and generate with its output)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import DATA
from lmdistill.cli import main
from lmdistill.errors import ConfigError
from lmdistill.losses import kept_kd_kl
from lmdistill.models.vocab import (
    VocabMap,
    build_vocab_map,
    choose_substitutes,
    count_tokens,
    parameter_split,
    resolve_keep,
    select_kept,
    shrink_model,
)
from lmdistill.models.vocab_tokenizer import compressed_tokenizer, structure
from lmdistill.tasks.corpus import read_paragraphs

BOOKS = DATA / "books"
TEXT = ("Alice was beginning to get very tired of sitting by her sister on the bank. "
        "Mr. Copperfield's xylophone cost 1,234 dollars!")


def book_texts() -> list[str]:
    return read_paragraphs(BOOKS / "alice.txt")


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(DATA / "tokenizers" / "gpt2")


@pytest.fixture(scope="module")
def bert_tokenizer():
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(DATA / "tokenizers" / "bert-base-uncased")


def compress(tokenizer, keep: float, extra_forced=(), method="dot", seed=0):
    vocab_size = len(tokenizer)
    counts = count_tokens(tokenizer, book_texts(), vocab_size)
    forced, parts = structure(tokenizer)
    kept = select_kept(counts, resolve_keep(keep, vocab_size), forced | set(extra_forced), parts)
    torch.manual_seed(seed)
    return build_vocab_map(kept, torch.randn(vocab_size, 8), method, tokenizer.unk_token_id), forced, parts


# ---- ranking and the map ---------------------------------------------------------------------------

def test_resolve_keep_rounds_to_64_and_rejects_bad_values():
    assert resolve_keep(0.5, 49152) == 24576
    assert resolve_keep(0.25, 50257) == 12608  # 12564.25 -> the next multiple of 64
    assert resolve_keep(1.0, 50257) == 50257  # capped at the vocabulary
    assert resolve_keep(1000, 50257) == 1024
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ConfigError, match=r"outside \(0, 1\]"):
            resolve_keep(bad, 1000)
    with pytest.raises(ConfigError, match=r"2000 tokens is larger than the vocabulary \(1000 tokens\)"):
        resolve_keep(2000, 1000)


def test_select_kept_forced_first_then_frequency_and_closed_under_merges():
    counts = torch.tensor([0, 5, 9, 1, 7, 0, 3, 8])
    # token 7 is built from 5 and 6; token 4 from 3 and 1
    parts = {7: (5, 6), 4: (3, 1)}
    kept = select_kept(counts, 5, forced={0}, parts=parts).tolist()
    # 0 forced; 2 (9); 7 (8) needs 5 and 6 -> {0, 2, 5, 6, 7} is full
    assert kept == [0, 2, 5, 6, 7]
    # By count: 2 (9) fits; 7 (8) with its parts 5 and 6 does not; nor 4 (7) with 3 and 1; then 1 (5), 6 (3).
    kept = select_kept(counts, 4, forced={0}, parts=parts).tolist()
    assert kept == [0, 1, 2, 6]
    for token in kept:
        assert all(part in kept for part in parts.get(token, ()))
    with pytest.raises(ConfigError, match="cannot hold the 3 tokens that must be kept"):
        select_kept(counts, 2, forced={0, 1, 3})


def test_every_id_maps_to_a_kept_id_and_specials_and_verbalizers_survive(gpt2_tokenizer):
    verbalizers = [gpt2_tokenizer(" negative")["input_ids"][0], gpt2_tokenizer(" volcano")["input_ids"][0]]
    assert len(gpt2_tokenizer(" volcano")["input_ids"]) == 1  # a rare word that is one GPT-2 token
    vmap, forced, parts = compress(gpt2_tokenizer, 0.1, extra_forced=verbalizers)
    kept = set(vmap.kept_ids.tolist())
    assert vmap.kept_size == resolve_keep(0.1, len(gpt2_tokenizer)) == len(kept)
    assert vmap.old_to_new.min() >= 0 and vmap.old_to_new.max() < vmap.kept_size
    assert set(vmap.substitutes.tolist()) <= kept  # every id lands on a kept token
    assert torch.equal(vmap.substitutes[vmap.kept_ids], vmap.kept_ids)  # kept tokens map to themselves
    assert set(gpt2_tokenizer.all_special_ids) <= kept and set(verbalizers) <= kept
    assert all(all(p in kept for p in parts.get(t, ())) for t in kept)  # closed under merges
    assert vmap.kept_mask.sum() == vmap.kept_size


def test_substitute_rule_matches_a_hand_computation():
    # Token embeddings (rows); kept: 0, 1, 2; dropped: 3, 4.
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0], [0.9, 0.1], [-1.0, 0.2]])
    kept = torch.tensor([0, 1, 2])
    # dot: token 3 . (0, 1, 2) = 0.9, 0.1, 3.0 -> 2; token 4 . = -1.0, 0.2, -2.4 -> 1
    assert choose_substitutes(emb, kept, "dot").tolist() == [0, 1, 2, 2, 1]
    # cosine: token 3 -> 0 (0.994 vs 0.110, 0.781); token 4 -> 1 (-0.981, 0.196, -0.555)
    assert choose_substitutes(emb, kept, "cosine").tolist() == [0, 1, 2, 0, 1]
    assert choose_substitutes(emb, kept, "unk", unk_id=1).tolist() == [0, 1, 2, 1, 1]
    with pytest.raises(ConfigError, match="'unk' needs a tokenizer with an unknown token"):
        choose_substitutes(emb, kept, "unk", unk_id=None)
    vmap = build_vocab_map(kept, emb, "dot")
    assert vmap.old_to_new.tolist() == [0, 1, 2, 2, 1]
    assert vmap.to_new(torch.tensor([[3, 4, 0]])).tolist() == [[2, 1, 0]]


def test_vocab_map_save_load(tmp_path):
    emb = torch.randn(300, 4)
    vmap = build_vocab_map(torch.arange(0, 300, 3), emb, "cosine")
    vmap.save(tmp_path)
    again = VocabMap.load(tmp_path)
    assert torch.equal(again.kept_ids, vmap.kept_ids) and torch.equal(again.old_to_new, vmap.old_to_new)
    assert again.method == "cosine"


def test_kept_column_kl_equals_an_independent_computation():
    torch.manual_seed(0)
    teacher = torch.randn(6, 10) * 3
    kept = torch.tensor([0, 2, 3, 7, 9])
    student = torch.randn(6, 5) * 3
    temperature = 2.0
    # Independent: teacher probabilities over the full vocabulary, restricted to the kept tokens and
    # renormalised; KL against the student's softmax, by explicit sums.
    expected = 0.0
    for row in range(6):
        p_full = torch.softmax(teacher[row].double() / temperature, -1)
        p = p_full[kept] / p_full[kept].sum()
        q = torch.softmax(student[row].double() / temperature, -1)
        expected += float((p * (p.log() - q.log())).sum())
    expected = expected / 6 * temperature ** 2
    assert kept_kd_kl(student, teacher, kept, temperature).item() == pytest.approx(expected, rel=1e-5)
    # Without a map it is the plain KL.
    same = torch.randn(6, 10)
    assert kept_kd_kl(same, teacher, None, 1.0).item() == pytest.approx(
        F.kl_div(F.log_softmax(same, -1), F.log_softmax(teacher, -1), log_target=True, reduction="batchmean").item(),
        rel=1e-5)


# ---- model surgery -----------------------------------------------------------------------------------

def tiny_llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=1, intermediate_size=32, max_position_embeddings=64,
                                        tie_word_embeddings=tied, bos_token_id=0, eos_token_id=1, pad_token_id=1))


def tiny_bert_mlm():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=300, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=64, pad_token_id=0))
    with torch.no_grad():
        model.cls.predictions.bias.normal_()  # a non-zero output bias, so its rows are checked too
    return model


@pytest.mark.parametrize("make", [lambda: tiny_llama(True), lambda: tiny_llama(False), tiny_bert_mlm],
                         ids=["llama-tied", "llama-untied", "bert-mlm"])
def test_shrunk_model_gives_the_kept_columns_of_the_original(make):
    model = make().eval()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    kept = torch.tensor(sorted({0, 1} | set(range(5, 300, 4))))
    vmap = build_vocab_map(kept, model.get_input_embeddings().weight)
    ids = kept[torch.randint(len(kept), (2, 7), generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        expected = model(input_ids=ids).logits[..., kept]
    before = parameter_split(model)
    shrink_model(model, vmap)
    with torch.no_grad():
        got = model(input_ids=vmap.to_new(ids)).logits
    assert got.shape[-1] == len(kept) == model.config.vocab_size
    assert torch.allclose(got, expected, atol=1e-5)
    after = parameter_split(model)
    assert after["rest"] == before["rest"]
    removed = (300 - len(kept)) * 16 * (1 if tied else 2) + (300 - len(kept)) * (model.get_output_embeddings().bias is not None)
    assert before["embedding"] - after["embedding"] == removed


def test_tied_weights_stay_tied_and_round_trip_save_load(tmp_path):
    from transformers import AutoModelForCausalLM

    for tied in (True, False):
        model = tiny_llama(tied).eval()
        vmap = build_vocab_map(torch.arange(0, 300, 2), model.get_input_embeddings().weight)
        shrink_model(model, vmap)
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
        assert model.config.pad_token_id == int(vmap.old_to_new[1])
        model.save_pretrained(tmp_path / str(tied))
        again = AutoModelForCausalLM.from_pretrained(tmp_path / str(tied)).eval()
        ids = torch.randint(150, (2, 9))
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
        assert again.config.vocab_size == 150


# ---- the rewritten tokenizer --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gpt2_tokenizer", "bert_tokenizer"])
def test_compressed_tokenizer_is_exact_where_it_can_be_and_lossless_everywhere(name, request):
    tokenizer = request.getfixturevalue(name)
    vmap, _, _ = compress(tokenizer, 0.1)
    small = compressed_tokenizer(tokenizer, vmap)
    assert len(small) == vmap.kept_size
    kept = vmap.kept_mask
    exact = 0
    for text in book_texts()[:60] + [TEXT]:
        original = tokenizer(text)["input_ids"]
        new = small(text)["input_ids"]
        assert max(new) < vmap.kept_size
        # Decoding gives the same text as the original tokenizer does.
        assert small.decode(new) == tokenizer.decode(original)
        if bool(kept[original].all()):  # no dropped token: the same tokens, renumbered
            assert new == vmap.to_new(torch.tensor(original)).tolist()
            exact += 1
        else:  # a dropped token is spelled with kept pieces
            assert len(new) > len(original)
    assert exact >= 20  # most book paragraphs use only kept tokens (the ranking corpus is this book)


def test_compressed_tokenizer_saves_and_loads_with_auto_tokenizer(gpt2_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    vmap, _, _ = compress(gpt2_tokenizer, 0.1)
    compressed_tokenizer(gpt2_tokenizer, vmap).save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    ids = loaded(TEXT)["input_ids"]
    assert max(ids) < vmap.kept_size and loaded.decode(ids) == TEXT
    assert loaded.eos_token_id == int(vmap.old_to_new[gpt2_tokenizer.eos_token_id])


# ---- lmdistill compress-vocab ---------------------------------------------------------------------------

PLAIN_TRANSFORMERS = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, text = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
encoded = tokenizer(text, return_tensors="pt")
out = model.generate(**encoded, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
print(json.dumps({"ids": out[0].tolist(), "text": tokenizer.decode(out[0]), "vocab": model.config.vocab_size,
                  "tokenizer": len(tokenizer), "lmdistill": any(m.startswith("lmdistill") for m in sys.modules)}))
"""


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_compress_vocab_command_and_plain_transformers_generate(tiny_llama_dir, tmp_path, capsys, tied):
    from transformers import AutoModelForCausalLM

    source = tiny_llama_dir
    if not tied:
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
        untied = tmp_path / "untied"
        model.config.tie_word_embeddings = False
        fresh = type(model)(model.config)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["lm_head.weight"] = torch.randn_like(state["lm_head.weight"])
        fresh.load_state_dict(state, strict=False)
        fresh.save_pretrained(untied)
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(untied)
        source = untied
    out = tmp_path / "small"
    code = main(["compress-vocab", str(source), "--keep", "0.1", "--corpus", str(BOOKS / "*.txt"), "--out", str(out),
                 "--keep-token", " volcano"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "vocabulary: 50257 -> 5056 tokens" in printed
    lines = printed.splitlines()
    saving = 50257 - 5056
    embedding_before = 50257 * 32 * (1 if tied else 2)
    assert f"embedding {embedding_before / 1e6:.2f}M -> {embedding_before * 5056 / 50257 / 1e6:.2f}M" in lines[1]
    assert saving > 0

    if tied:  # a fresh interpreter that never imports lmdistill loads the folder and generates
        result = subprocess.run([sys.executable, "-c", PLAIN_TRANSFORMERS, str(out), TEXT], capture_output=True,
                                text=True, check=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
        got = json.loads(result.stdout.strip().splitlines()[-1])
        assert not got["lmdistill"]
        assert got["vocab"] == got["tokenizer"] == 5056
        assert max(got["ids"]) < 5056 and got["text"].startswith(TEXT)

    # The compressed model equals the original restricted to the kept tokens.
    vmap = VocabMap.load(out)
    original = AutoModelForCausalLM.from_pretrained(source).eval()
    small = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = vmap.kept_ids[torch.randint(vmap.kept_size, (1, 12), generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        assert torch.allclose(small(input_ids=vmap.to_new(ids)).logits, original(input_ids=ids).logits[..., vmap.kept_ids],
                              atol=1e-5)
    assert json.loads((out / "config.json").read_text())["vocab_compression"]["kept_size"] == 5056


@pytest.mark.parametrize("args, fragment", [
    (["--keep", "0"], "--keep: 0.0 is outside (0, 1]"),
    (["--keep", "1.5"], "--keep: 1.5 is outside (0, 1]"),
    (["--keep", "99999"], "--keep: 99999 tokens is larger than the vocabulary (50257 tokens)"),
    (["--keep", "0.5", "--keep-token", " xylophones"], "--keep-token: ' xylophones' is not one token of the tokenizer; "
                                                       "it splits into 'Ġx' + 'yl' + 'oph' + 'ones'"),
])
def test_compress_vocab_bad_input(tiny_llama_dir, tmp_path, capsys, args, fragment):
    out = tmp_path / "small"
    code = main(["compress-vocab", str(tiny_llama_dir), "--corpus", str(BOOKS / "*.txt"), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err
    assert not out.exists()


def test_compress_vocab_corpus_matching_no_file(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "small"
    code = main(["compress-vocab", str(tiny_llama_dir), "--keep", "0.5", "--corpus", str(tmp_path / "none*.txt"),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--corpus: '" in err and "matches no file" in err
    assert not out.exists()
