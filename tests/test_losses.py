"""Losses against numbers computed independently (numpy, by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmdistill.losses import kd_kl, masked_cosine, masked_mse, soft_cross_entropy


def np_softmax(x, t=1.0):
    z = np.exp((x - x.max(-1, keepdims=True)) / t)
    return z / z.sum(-1, keepdims=True)


def test_kd_kl_matches_numpy():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    for temperature in (1.0, 2.0, 4.0):
        p, q = np_softmax(t, temperature), np_softmax(s, temperature)
        expected = (p * (np.log(p) - np.log(q))).sum(-1).mean() * temperature**2
        got = kd_kl(torch.tensor(s), torch.tensor(t), temperature).item()
        assert got == pytest.approx(expected, rel=1e-5)


def test_kd_kl_by_hand():
    # two classes, teacher (0.5, 0.5), student logits (log 3, 0) -> q = (0.75, 0.25)
    s = torch.tensor([[math.log(3.0), 0.0]])
    t = torch.zeros(1, 2)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert kd_kl(s, t, 1.0).item() == pytest.approx(expected, rel=1e-6)
    assert kd_kl(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_soft_cross_entropy_is_kl_plus_teacher_entropy():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    p = np_softmax(t)
    entropy = -(p * np.log(p)).sum(-1).mean()
    got = soft_cross_entropy(torch.tensor(s), torch.tensor(t)).item()
    assert got == pytest.approx(kd_kl(torch.tensor(s), torch.tensor(t)).item() + entropy, rel=1e-5)


def test_masked_mse_ignores_padding():
    student = torch.zeros(1, 3, 2)
    teacher = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert masked_mse(student, teacher, mask).item() == pytest.approx((1 + 1 + 9 + 9) / 4)
    assert masked_mse(student, teacher).item() == pytest.approx((1 + 1 + 9 + 9 + 2 * 10000) / 6)


def test_masked_cosine():
    student = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert masked_cosine(student, teacher, mask).item() == pytest.approx((0.0 + 1.0) / 2)
