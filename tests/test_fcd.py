"""FCD: relation matrices, the correlation loss, the recipe's loss, and end-to-end runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import DATA, sst2_config
from lmdistill.api import distill
from lmdistill.losses import (
    correlation_loss,
    pearson_rows,
    sequence_relations_per_position,
    sequence_relations_pooled,
    token_relations,
)
from lmdistill.models.features import Features

RELATIONS = [
    ("token-cosine", lambda h, m: token_relations(h, m, "cosine", False)),
    ("token-softmax", lambda h, m: token_relations(h, m, "softmax", False)),
    ("token-cosine-causal", lambda h, m: token_relations(h, m, "cosine", True)),
    ("token-softmax-causal", lambda h, m: token_relations(h, m, "softmax", True)),
    ("seq-position", sequence_relations_per_position),
    ("seq-pooled-mean", lambda h, m: sequence_relations_pooled(h, m, "mean")),
    ("seq-pooled-first", lambda h, m: sequence_relations_pooled(h, m, "first")),
]
IDS = [name for name, _ in RELATIONS]
FUNCS = [fn for _, fn in RELATIONS]


def batch(seed=0, b=4, length=7, width=8):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, length, width, generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    return h, mask


# ---- the correlation loss ------------------------------------------------------------------------

@pytest.mark.parametrize("columns", [False, True])
@pytest.mark.parametrize("relation", FUNCS, ids=IDS)
def test_loss_is_zero_for_identical_relations(relation, columns):
    h, mask = batch()
    r, valid = relation(h, mask)
    assert correlation_loss(r, r.clone(), valid, columns).item() == pytest.approx(0.0, abs=1e-6)
    other, _ = relation(torch.randn(4, 7, 5), mask)  # a different (and narrower) model
    assert correlation_loss(other, r, valid, columns).item() > 1e-3


@pytest.mark.parametrize("columns", [False, True])
@pytest.mark.parametrize("relation", FUNCS, ids=IDS)
def test_loss_invariant_to_scale_and_shift(relation, columns):
    h, mask = batch(1)
    rt, valid = relation(h, mask)
    rs, _ = relation(torch.randn(4, 7, 5, generator=torch.Generator().manual_seed(2)), mask)
    base = correlation_loss(rs, rt, valid, columns).item()
    assert base > 1e-3
    for scale, shift in [(3.7, 0.0), (0.05, 0.0), (1.0, 5.0), (1.0, -2.5), (12.0, 0.3)]:
        moved = correlation_loss(scale * rs + shift, rt, valid, columns).item()
        assert moved == pytest.approx(base, abs=1e-5), (scale, shift)
    # The teacher side too, and a negative scale flips the sign of every correlation.
    assert correlation_loss(rs, 2.0 * rt + 1.0, valid, columns).item() == pytest.approx(base, abs=1e-5)
    assert correlation_loss(-rs, rt, valid, columns).item() == pytest.approx(2.0 - base, abs=1e-5)


def test_pearson_rows_against_numpy():
    a = np.array([[1.0, 2.0, 3.0, 4.0, 5.0],
                  [2.0, -1.0, 0.5, 3.0, 1.0],
                  [0.0, 0.0, 1.0, 0.0, 7.0],
                  [3.0, 1.0, 4.0, 1.0, 5.0]])
    b = np.array([[2.0, 1.0, 4.0, 3.0, 6.0],
                  [1.0, 1.5, -2.0, 0.0, 1.0],
                  [5.0, 3.0, 1.0, 0.0, 2.0],
                  [9.0, 2.0, 6.0, 5.0, 3.0]])
    rho, row_valid = pearson_rows(torch.tensor(a), torch.tensor(b))
    expected = [np.corrcoef(a[i], b[i])[0, 1] for i in range(4)]
    assert row_valid.all()
    np.testing.assert_allclose(rho.numpy(), expected, atol=1e-6)
    loss = correlation_loss(torch.tensor(a), torch.tensor(b))
    assert loss.item() == pytest.approx(1 - np.mean(expected), abs=1e-6)
    # Columns: the mean of the row term and the same term on the transposes.
    cols = [np.corrcoef(a[:4, j], b[:4, j])[0, 1] for j in range(4)]
    square_a, square_b = torch.tensor(a[:, :4]), torch.tensor(b[:, :4])
    rows4 = [np.corrcoef(a[i, :4], b[i, :4])[0, 1] for i in range(4)]
    assert correlation_loss(square_a, square_b, columns=True).item() == pytest.approx(
        0.5 * ((1 - np.mean(rows4)) + (1 - np.mean(cols))), abs=1e-6)
    # Masked entries are left out of the row's correlation (and its mean).
    valid = np.ones_like(a, dtype=bool)
    valid[0, 4] = valid[1, 0] = False
    valid[2, 1:] = False  # one entry left: undefined, the row does not count
    rho, row_valid = pearson_rows(torch.tensor(a), torch.tensor(b), torch.tensor(valid))
    assert row_valid.tolist() == [True, True, False, True]
    for i in (0, 1, 3):
        assert rho[i].item() == pytest.approx(np.corrcoef(a[i][valid[i]], b[i][valid[i]])[0, 1], abs=1e-6)
    assert rho[2].item() == 0.0
    # A [N] row mask on a square matrix means entry (i, j) counts when rows i and j both do.
    rows = torch.tensor([True, False, True, True])
    entries = rows.unsqueeze(-1) & rows.unsqueeze(-2)
    assert correlation_loss(square_a, square_b, rows).item() == pytest.approx(
        correlation_loss(square_a, square_b, entries).item(), abs=1e-7)
    keep = [0, 2, 3]
    sub = [np.corrcoef(a[i, keep], b[i, keep])[0, 1] for i in keep]
    assert correlation_loss(square_a, square_b, rows).item() == pytest.approx(1 - np.mean(sub), abs=1e-6)


def test_constant_teacher_row_is_skipped_and_constant_student_row_is_finite():
    rt = torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    rs = torch.tensor([[4.0, 5.0, 6.0], [2.0, 2.0, 2.0]], requires_grad=True)
    rho, row_valid = pearson_rows(rs, rt)
    assert row_valid.tolist() == [False, True] and rho.tolist() == [0.0, 0.0]
    loss = correlation_loss(rs, rt)
    loss.backward()
    assert loss.item() == pytest.approx(1.0) and torch.isfinite(rs.grad).all()
    # No valid row at all: 0, still differentiable.
    empty = correlation_loss(rs, torch.ones(2, 3))
    assert empty.item() == 0.0 and empty.requires_grad


# ---- padding ----------------------------------------------------------------------------------

@pytest.mark.parametrize("relation", FUNCS, ids=IDS)
def test_padding_does_not_change_relations_or_loss(relation):
    h, mask = batch(3)
    hs = torch.randn(4, 7, 5, generator=torch.Generator().manual_seed(4))
    # The same batch with 5 extra pad positions, and garbage (huge, inf, nan) at every pad position.
    extra = 5

    def padded(x):
        out = torch.cat([x, torch.zeros(x.shape[0], extra, x.shape[2])], dim=1)
        big_mask = torch.cat([mask, torch.zeros(mask.shape[0], extra, dtype=mask.dtype)], dim=1)
        garbage = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)) * 1e4
        garbage[0, -1, 0] = float("inf")
        garbage[3, -2, 1] = float("nan")
        return torch.where(big_mask.bool().unsqueeze(-1), out, garbage), big_mask

    h2, mask2 = padded(h)
    hs2, _ = padded(hs)
    r1, v1 = relation(h, mask)
    r2, v2 = relation(h2, mask2)
    assert torch.isfinite(r2).all()
    if r1.dim() == 3 and r1.shape[0] == 4:  # token relations [B, L, L]
        assert torch.allclose(r2[:, :7, :7], r1, atol=1e-6) and not v2[:, 7:].any() and not v2[:, :, 7:].any()
    elif r1.dim() == 3:  # per position [L, B, B]
        assert torch.allclose(r2[:7], r1, atol=1e-6) and not v2[7:].any()
    else:  # pooled [B, B]
        assert torch.allclose(r2, r1, atol=1e-6)
    for columns in (False, True):
        before = correlation_loss(relation(hs, mask)[0], r1, v1, columns)
        after = correlation_loss(relation(hs2, mask2)[0], r2, v2, columns)
        assert after.item() == pytest.approx(before.item(), abs=1e-6)


def test_padding_gets_no_gradient():
    h, mask = batch(5)
    h[2, 4, :] = float("nan")  # a pad position
    hs = h.clone().requires_grad_(True)
    ht = torch.randn(4, 7, 3)
    total = 0.0
    for relation in FUNCS:
        rs, valid = relation(hs, mask)
        total = total + correlation_loss(rs, relation(ht, mask)[0], valid, columns=True)
    total.backward()
    assert torch.isfinite(hs.grad).all()
    assert (hs.grad[~mask.bool()] == 0).all() and hs.grad[mask.bool()].abs().sum() > 0


def test_per_position_relations_count_only_sequences_present_there():
    h, mask = batch(6)
    r, valid = sequence_relations_per_position(h, mask)
    # position 4: sequence 2 is padding there, the others are real
    assert valid[4].tolist() == [[True, True, False, True], [True, True, False, True],
                                 [False, False, False, False], [True, True, False, True]]
    rho, rows = pearson_rows(r, r, valid)
    assert rows[4].tolist() == [True, True, False, True]
    assert rows[6].tolist() == [True, False, False, True]  # only sequences 0 and 3 reach position 6


# ---- causal masking ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cosine", "softmax"])
def test_causal_rows_ignore_future_tokens(kind):
    g = torch.Generator().manual_seed(7)
    hs, ht = torch.randn(2, 9, 6, generator=g), torch.randn(2, 9, 10, generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 8:] = 0
    k = 5  # tokens k.. are the "future" of rows < k
    hs2, ht2 = hs.clone(), ht.clone()
    hs2[:, k:] = torch.randn(2, 9 - k, 6, generator=g) * 3
    ht2[:, k:] = torch.randn(2, 9 - k, 10, generator=g) * 3

    def row_losses(s, t, causal):
        rs, valid = token_relations(s, mask, kind, causal)
        rt, _ = token_relations(t, mask, kind, causal)
        rho, rows = pearson_rows(rs, rt, valid)
        return 1 - rho, rows

    before, rows = row_losses(hs, ht, True)
    after, rows2 = row_losses(hs2, ht2, True)
    assert torch.equal(rows, rows2)
    assert rows[:, 1:k].all() and not rows[:, 0].any()  # row 0 (only itself) has no correlation
    torch.testing.assert_close(after[:, :k], before[:, :k], atol=1e-6, rtol=0)
    assert (after[:, k:] - before[:, k:]).abs().max() > 1e-3
    # Without the causal mask the same change does move the earlier rows.
    nc_before, _ = row_losses(hs, ht, False)
    nc_after, _ = row_losses(hs2, ht2, False)
    assert (nc_after[:, :k] - nc_before[:, :k]).abs().max() > 1e-3
    # And the future entries are marked invalid.
    _, valid = token_relations(hs, mask, kind, True)
    assert torch.equal(valid[0], torch.ones(9, 9, dtype=torch.bool).tril())


# ---- the recipe's loss -----------------------------------------------------------------------------

def make_recipe(causal="auto", student_class="BertModel", **settings):
    from transformers import BertConfig

    from lmdistill.recipes.fcd import FCDRecipe, FCDSettings

    def model(width, layers, arch):
        config = BertConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=2,
                            intermediate_size=2 * width, architectures=[arch])
        return SimpleNamespace(config=config)

    task = SimpleNamespace(logit_pairs=lambda s, t, feats: [(s, t)])
    context = SimpleNamespace(task=task, teacher=model(12, 4, "BertModel"), student=model(6, 2, student_class),
                              teacher_layers=4, student_layers=2, teacher_width=12, student_width=6)
    return FCDRecipe(FCDSettings(name="fcd", causal=causal, **settings), context)


def features(width, layers, requires_grad, seed, mask, logits_width=3):
    g = torch.Generator().manual_seed(seed)
    b, length = mask.shape
    hidden = tuple(torch.randn(b, length, width, generator=g).requires_grad_(requires_grad)
                   for _ in range(layers + 1))
    logits = torch.randn(b, logits_width, generator=g).requires_grad_(requires_grad)
    task_loss = (logits ** 2).mean() if requires_grad else None
    return Features(logits=logits, hidden_states=hidden, attentions=None, mask=mask, task_loss=task_loss)


def test_gradients_reach_the_student_only():
    _, mask = batch()
    recipe = make_recipe(use_columns=True)
    assert recipe.layer_map == [(1, 2), (2, 4)]
    student = features(6, 2, True, 0, mask)
    teacher = features(12, 4, True, 1, mask)  # requires_grad on purpose: the loss must detach it
    loss, logs = recipe.stages()[0].loss(student, teacher, {})
    assert set(logs) == {"task", "kd", "token", "sequence"}
    loss.backward()
    assert all(h.grad is None for h in teacher.hidden_states) and teacher.logits.grad is None
    for s in (1, 2):
        assert student.hidden_states[s].grad is not None and student.hidden_states[s].grad.abs().sum() > 0
    assert student.hidden_states[0].grad is None  # layer 0 is not in the map


def test_variants_by_config_alone():
    _, mask = batch()
    student, teacher = features(6, 2, True, 0, mask), features(12, 4, False, 1, mask)
    logs = {}
    for name, settings in {"token": {"gamma": 0}, "sequence": {"beta": 0}, "both": {},
                           "pooled": {"sequence_relation": "pooled", "pooling": "first"},
                           "softmax": {"token_relation": "softmax", "layer_map": "last"},
                           "relations-only": {"alpha_task": 0, "alpha_kd": 0}}.items():
        loss, logs[name] = make_recipe(**settings).stages()[0].loss(student, teacher, {})
        assert torch.isfinite(loss)
    assert "sequence" not in logs["token"] and "token" in logs["token"]
    assert "token" not in logs["sequence"] and "sequence" in logs["sequence"]
    assert {"token", "sequence"} <= set(logs["both"])
    assert set(logs["relations-only"]) == {"token", "sequence"}


def test_settings_and_causal_detection():
    from lmdistill.errors import ConfigError

    assert make_recipe().causal is False
    assert make_recipe(student_class="LlamaForCausalLM").causal is True
    assert make_recipe(causal="true").causal is True and make_recipe(causal=True).causal is True
    assert make_recipe(causal="false", student_class="LlamaForCausalLM").causal is False
    from lmdistill.config import parse_config

    base = sst2_config("minilm", Path("/tmp/x"), Path("/tmp/c"))
    with pytest.raises(ConfigError, match="^recipe: alpha_task, alpha_kd, beta and gamma are all 0; nothing would train"):
        parse_config({**base, "recipe": {"name": "fcd", "alpha_task": 0, "alpha_kd": 0, "beta": 0, "gamma": 0}})
    with pytest.raises(ConfigError, match="recipe.gama: unknown key"):
        parse_config({**base, "recipe": {"name": "fcd", "gama": 1.0}})
    with pytest.raises(ConfigError, match="recipe.token_relation"):
        parse_config({**base, "recipe": {"name": "fcd", "token_relation": "dot"}})
    config = parse_config({**base, "recipe": {"name": "fcd", "beta": 0, "layer_map": [[2, 4]]}})
    assert config.recipe.beta == 0 and config.recipe.layer_map == [[2, 4]]


# ---- end to end -------------------------------------------------------------------------------

def check_report(out: Path, recipe: str, kind: str) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"] == recipe and report["task"] == kind
    assert report["stages"][0]["stage"] == "fcd" and report["stages"][0]["steps"] > 0
    return report


def test_fcd_end_to_end_bert(tiny_bert_dir, tmp_path, cache_dir):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "run"
    recipe = {"name": "fcd", "temperature": 2.0, "use_columns": True}
    distill(sst2_config(tiny_bert_dir, out, cache_dir, recipe=recipe, bench={"enabled": False}))
    report = check_report(out, "fcd", "classification")
    assert 0.0 <= report["student"]["score"] <= 1.0
    model = AutoModelForSequenceClassification.from_pretrained(out / "student")
    assert model.config.num_hidden_layers == 2
    assert not (out / "extras").exists()  # no projections, nothing extra trained


def test_fcd_narrow_student_needs_no_projection(tiny_bert_dir, tmp_path, cache_dir):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "narrow"
    student = {"config": {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                          "intermediate_size": 32}}
    recipe = {"name": "fcd", "sequence_relation": "pooled", "token_relation": "softmax"}
    distill(sst2_config(tiny_bert_dir, out, cache_dir, recipe=recipe, student=student, bench={"enabled": False}))
    report = check_report(out, "fcd", "classification")
    model = AutoModelForSequenceClassification.from_pretrained(out / "student")
    assert model.config.hidden_size == 16 and model.config.num_hidden_layers == 2
    assert not (out / "extras").exists()
    assert report["student"]["params"] < report["teacher"]["params"]


HAS_LM = importlib.util.find_spec("lmdistill.tasks.language_modeling") is not None
LM_DATA = DATA / "wikitext2"


@pytest.mark.skipif(not (HAS_LM and (LM_DATA / "train.txt").is_file() and (LM_DATA / "eval.txt").is_file()),
                    reason="the language-modeling task or data/wikitext2/{train,eval}.txt is not there yet")
def test_fcd_end_to_end_causal_lm(tiny_llama_dir, tmp_path, cache_dir):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lm"
    config = {
        "teacher": {"path": str(tiny_llama_dir), "finetune": "never"},
        "student": {"layers": [0, 2]},
        "task": {"kind": "language-modeling", "train": str(LM_DATA / "train.txt"),
                 "eval": str(LM_DATA / "eval.txt"), "max_length": 32, "block_size": 32,
                 "max_train_samples": 24, "max_eval_samples": 8},
        "recipe": {"name": "fcd", "causal": "auto", "temperature": 2.0},
        "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1, "seed": 0},
        "bench": {"enabled": False},
        "output": str(out),
        "cache_dir": str(cache_dir),
    }
    distill(config)
    report = check_report(out, "fcd", "language-modeling")
    assert np.isfinite(report["student"]["score"])
    model = AutoModelForCausalLM.from_pretrained(out / "student")
    assert model.config.num_hidden_layers == 2
    from lmdistill.config import parse_config
    from lmdistill.recipes.fcd import resolve_causal

    assert resolve_causal(parse_config(config).recipe.causal, model) is True
