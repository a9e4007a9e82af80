"""Pure loss functions of tensors and masks. No model, no config: each is tested against numbers
computed independently (tests/test_losses.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over rows.

    student_logits, teacher_logits: [N, C]. The T^2 factor keeps gradient size independent of T.
    """
    if student_logits.numel() == 0:
        return student_logits.sum() * 0.0
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return kl.mean() * (t * t)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """-sum_c p_t(c) log p_s(c), averaged over rows ([N, C] each)."""
    p_teacher = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return -(p_teacher * F.log_softmax(student_logits.float() / temperature, dim=-1)).sum(-1).mean()


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over [B, L, H] states; with a [B, L] mask, only real tokens count."""
    if mask is None:
        return F.mse_loss(student.float(), teacher.float())
    weight = mask.unsqueeze(-1).to(student.dtype)
    squared = (student.float() - teacher.float()).pow(2) * weight
    return squared.sum() / (weight.sum() * student.shape[-1]).clamp_min(1.0)


def masked_cosine(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 - cosine similarity per token, averaged over real tokens ([B, L, H] each, mask [B, L])."""
    distance = 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)
    if mask is None:
        return distance.mean()
    weight = mask.to(distance.dtype)
    return (distance * weight).sum() / weight.sum().clamp_min(1.0)
