"""Pure loss functions of tensors and masks. No model, no config: each is tested against numbers
computed independently (tests/test_losses.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(student_logits: torch.Tensor, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over rows.

    student_logits: [N, C]; teacher_logits: [N, C], or a `TopKLogits` (a cached LM teacher), for which
    the KL is `topk_kd_kl`'s. The T^2 factor keeps gradient size independent of T.
    """
    from lmdistill.models.features import TopKLogits

    if isinstance(teacher_logits, TopKLogits):
        return topk_kd_kl(student_logits, teacher_logits, temperature)
    if student_logits.numel() == 0:
        return student_logits.sum() * 0.0
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)  # the teacher is a target
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return kl.mean() * (t * t)


def kept_kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kept_ids: torch.Tensor | None,
               temperature: float = 1.0) -> torch.Tensor:
    """`kd_kl` over a compressed vocabulary (GLMD): the student predicts only the kept tokens, so the
    teacher's logits are read at the kept columns and its distribution renormalised over them.

    student_logits: [N, K]; teacher_logits: [N, V]; kept_ids: [K] teacher column of each student column
    (None: the vocabularies are the same, plain `kd_kl`)."""
    if kept_ids is not None:
        teacher_logits = teacher_logits.index_select(-1, kept_ids.to(teacher_logits.device))
    return kd_kl(student_logits, teacher_logits, temperature)


def topk_kd_kl(student_logits: torch.Tensor, teacher, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL between the teacher and student distributions coarsened to K + 1 outcomes: the
    teacher's top-k tokens, and one tail bucket holding every other token. Averaged over rows.

    student_logits: [N, V] (full vocabulary); teacher: a `TopKLogits` with values/indices [N, k] and
    tail_lse [N] = log sum_{j not in top-k} exp(z_j / T), cached at this temperature.

        p_i    = exp(z_i / T - Z),  Z = logsumexp(logsumexp_i(z_i / T), tail_lse)   (i in top-k)
        p_tail = exp(tail_lse - Z)
        q_i    = softmax(s / T)_i,  q_tail = sum of q over the tokens outside the teacher's top-k
        KL     = sum_i p_i log(p_i / q_i) + p_tail log(p_tail / q_tail)

    This is the exact KL when the tail is empty (k = V). Otherwise it is a lower bound of the full KL
    (merging outcomes never increases a KL divergence): the student is pulled towards the teacher's
    top-k probabilities exactly and towards the teacher's total tail mass, but not towards the
    teacher's shape inside the tail. The README reports its error against the full KL on real text.
    """
    if student_logits.numel() == 0:
        return student_logits.sum() * 0.0
    if abs(teacher.temperature - temperature) > 1e-9:
        raise ValueError(f"top-k teacher logits were cached at temperature {teacher.temperature}, "
                         f"the loss reads them at {temperature}")
    t = temperature
    scaled = student_logits.float() / t
    log_z_student = scaled.logsumexp(-1)
    indices = teacher.indices.long()
    log_q_top = scaled.gather(-1, indices) - log_z_student.unsqueeze(-1)
    outside = scaled.scatter(-1, indices, float("-inf"))
    log_q_tail = outside.logsumexp(-1) - log_z_student

    top = teacher.values.float() / t
    tail = teacher.tail_lse.float()
    log_z_teacher = torch.logaddexp(top.logsumexp(-1), tail)
    log_p_top = top - log_z_teacher.unsqueeze(-1)
    log_p_tail = tail - log_z_teacher
    kl = (log_p_top.exp() * (log_p_top - log_q_top)).sum(-1)
    p_tail = log_p_tail.exp()
    # An empty tail (p_tail = 0, both logs -inf) contributes nothing.
    tail_term = torch.where(p_tail > 0, p_tail * (log_p_tail - log_q_tail), torch.zeros_like(p_tail))
    return (kl + tail_term).mean() * (t * t)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """-sum_c p_t(c) log p_s(c), averaged over rows ([N, C] each)."""
    p_teacher = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
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


# ---------------------------------------------------------------------------------------------------
# FCD: relation matrices and correlation loss
#
# Relations are built from hidden states alone (no learned parameters), so teacher and student widths
# may differ. Every function takes an explicit mask; padded (and, for causal models, future) entries
# are excluded so that they influence nothing, neither values nor gradients. See recipes/fcd.py for
# the method and for which parts are our reconstruction.
# ---------------------------------------------------------------------------------------------------


def _zero_padding(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Float32 copy of h [B, L, H] with padded positions set to 0, so garbage there (even inf/nan)
    reaches neither the values nor the gradients of any relation."""
    keep = mask.bool().unsqueeze(-1)
    return torch.where(keep, h.float(), torch.zeros((), dtype=torch.float32, device=h.device))


def token_relations(h: torch.Tensor, mask: torch.Tensor, kind: str = "cosine", causal: bool = False):
    """Token-level relations: per sequence, an L x L similarity between its token features.

    h:    [B, L, H] hidden states; mask: [B, L] (1 = real token, 0 = padding).
    kind: "cosine"  -> R[b, i, j] = cos(h[b, i], h[b, j]);
          "softmax" -> R[b, i, :] = softmax_j(h[b, i] . h[b, j] / sqrt(H)) over the valid j only.
    causal: token i relates only to tokens j <= i (future entries are invalid).

    Returns (R [B, L, L] float32, valid [B, L, L] bool). valid[b, i, j] = mask[b, i] & mask[b, j]
    (& j <= i when causal). Invalid entries of R are 0.
    """
    if kind not in ("cosine", "softmax"):
        raise ValueError(f"token_relations: unknown kind '{kind}' (cosine or softmax)")
    m = mask.bool()
    x = _zero_padding(h, m)
    valid = m.unsqueeze(-1) & m.unsqueeze(-2)
    if causal:
        length = h.shape[1]
        valid = valid & torch.ones(length, length, dtype=torch.bool, device=h.device).tril()
    if kind == "cosine":
        x = F.normalize(x, dim=-1, eps=1e-8)
        relations = x @ x.transpose(-1, -2)
    else:
        scores = (x @ x.transpose(-1, -2)) / float(h.shape[-1]) ** 0.5
        scores = scores.masked_fill(~valid, float("-inf"))
        # Rows with no valid entry (padded rows) would be all -inf; give them zeros instead of nan.
        scores = torch.where(valid.any(-1, keepdim=True), scores, torch.zeros_like(scores))
        relations = scores.softmax(-1)
    relations = relations.masked_fill(~valid, 0.0)
    return relations, valid


def sequence_relations_per_position(h: torch.Tensor, mask: torch.Tensor):
    """Sequence-level relations per token position: for each position l, a B x B cosine similarity
    between the sequences' features at that position.

    h: [B, L, H]; mask: [B, L]. Returns (R [L, B, B] float32, valid [L, B, B] bool) with
    valid[l, i, j] = mask[i, l] & mask[j, l]: only sequences with a real token at position l count.
    Invalid entries of R are 0.
    """
    m = mask.bool()
    x = F.normalize(_zero_padding(h, m), dim=-1, eps=1e-8).transpose(0, 1)  # [L, B, H]
    mt = m.transpose(0, 1)  # [L, B]
    valid = mt.unsqueeze(-1) & mt.unsqueeze(-2)
    relations = (x @ x.transpose(-1, -2)).masked_fill(~valid, 0.0)
    return relations, valid


def pool_sequences(h: torch.Tensor, mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """One vector per sequence: [B, L, H] -> [B, H]. "mean" averages the real tokens; "first" takes
    position 0 (the [CLS] token of BERT-style inputs)."""
    m = mask.bool()
    x = _zero_padding(h, m)
    if pooling == "mean":
        weight = m.unsqueeze(-1).float()
        return (x * weight).sum(1) / weight.sum(1).clamp_min(1.0)
    if pooling == "first":
        return x[:, 0]
    raise ValueError(f"pool_sequences: unknown pooling '{pooling}' (mean or first)")


def sequence_relations_pooled(h: torch.Tensor, mask: torch.Tensor, pooling: str = "mean"):
    """Sequence-level relations from pooled sequence vectors: a B x B cosine similarity.

    h: [B, L, H]; mask: [B, L]; pooling: "mean" over real tokens or "first" token.
    Returns (R [B, B] float32, valid [B, B] bool); every sequence with a real token is valid.
    """
    m = mask.bool()
    pooled = F.normalize(pool_sequences(h, m, pooling), dim=-1, eps=1e-8)
    has_tokens = m.any(-1)
    valid = has_tokens.unsqueeze(-1) & has_tokens.unsqueeze(-2)
    relations = (pooled @ pooled.T).masked_fill(~valid, 0.0)
    return relations, valid


def _entry_mask(relations: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """An entry mask of relations' shape from None, an entry mask, or a row mask ([..., N], square
    matrices only: entry (i, j) counts when rows i and j both do)."""
    if valid is None:
        return torch.ones(relations.shape, dtype=torch.bool, device=relations.device)
    valid = valid.bool()
    if valid.shape == relations.shape:
        return valid
    if valid.shape == relations.shape[:-1] and relations.shape[-1] == relations.shape[-2]:
        return valid.unsqueeze(-1) & valid.unsqueeze(-2)
    raise ValueError(f"valid mask of shape {tuple(valid.shape)} does not fit relations {tuple(relations.shape)}")


def pearson_rows(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1e-12):
    """Pearson correlation between corresponding rows of a and b, over the valid entries only.

    a, b: [..., N, M] (b is the reference, e.g. the teacher); valid: [..., N, M] bool entry mask, a
    [..., N] row mask (square matrices), or None (all entries).
    Returns (rho [..., N] float32, row_valid [..., N] bool). A row is valid when it has at least two
    valid entries and b's row is not constant there (otherwise the correlation is undefined); rho is
    0 on invalid rows. Computed as cosine(a_row - mean, b_row - mean) with eps in the square root,
    so a constant student row gives rho = 0 with finite gradients.
    """
    valid = _entry_mask(a, valid)
    weight = valid.float()
    count = weight.sum(-1)
    zero = torch.zeros((), dtype=torch.float32, device=a.device)
    a, b = torch.where(valid, a.float(), zero), torch.where(valid, b.float(), zero)
    n = count.clamp_min(1.0).unsqueeze(-1)
    ac = (a - a.sum(-1, keepdim=True) / n) * weight
    bc = (b - b.sum(-1, keepdim=True) / n) * weight
    var_a, var_b = ac.pow(2).sum(-1), bc.pow(2).sum(-1)
    row_valid = (count >= 2) & (var_b > 1e-10 * count)
    rho = (ac * bc).sum(-1) / (torch.sqrt(var_a + eps) * torch.sqrt(var_b + eps))
    return torch.where(row_valid, rho, torch.zeros_like(rho)), row_valid


def correlation_loss(rs: torch.Tensor, rt: torch.Tensor, valid: torch.Tensor | None = None,
                     columns: bool = False) -> torch.Tensor:
    """1 - Pearson correlation between corresponding rows of the student and teacher relations,
    averaged over the valid rows (all leading dimensions pooled: each row weighs the same).

    rs, rt: [..., N, N] (or [..., N, M] without columns); valid: entry mask of the same shape, a
    [..., N] row mask, or None. columns=True: the mean of this row term and the same term on the
    transposed matrices (columns). Returns a scalar; 0 (with a graph to rs) if no row is valid.
    """
    def term(a, b, v):
        rho, row_valid = pearson_rows(a, b, v)
        weight = row_valid.float()
        if weight.sum() == 0:
            return a.sum() * 0.0
        return ((1.0 - rho) * weight).sum() / weight.sum()

    valid = _entry_mask(rs, valid)
    rows = term(rs, rt, valid)
    if not columns:
        return rows
    cols = term(rs.transpose(-1, -2), rt.transpose(-1, -2), valid.transpose(-1, -2))
    return 0.5 * (rows + cols)


# ---------------------------------------------------------------------------------------------------
# LAD: contrastive alignment with a memory queue, and attention-score MSE (see recipes/lad.py)
# ---------------------------------------------------------------------------------------------------


def info_nce(query: torch.Tensor, positive: torch.Tensor, queue: torch.Tensor, temperature: float = 0.07):
    """InfoNCE with a memory queue (MoCo style), averaged over rows.

    query [N, D] (student vectors), positive [N, D] (the teacher vector of the same token or sentence),
    queue [K, D] (earlier teacher vectors, the negatives; assumed L2-normalised). Query and positive are
    L2-normalised here; the positive and the queue are targets (no gradient):

        l_n = -log( exp(q_n.k_n / tau) / (exp(q_n.k_n / tau) + sum_j exp(q_n.Q_j / tau)) )
    """
    if query.shape[0] == 0:
        return query.sum() * 0.0
    q = F.normalize(query.float(), dim=-1)
    k = F.normalize(positive.detach().float(), dim=-1)
    positive_logit = (q * k).sum(-1, keepdim=True)
    negative_logits = q @ queue.detach().float().clone().t()  # a copy: the queue changes in place after the loss
    logits = torch.cat([positive_logit, negative_logits], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def attention_score_mse(student: torch.Tensor, teacher: torch.Tensor, masked_below: float = -100.0) -> torch.Tensor:
    """LAD's MSE between pre-softmax attention scores [B, heads, L, L] (mask already added): the first
    row and column are dropped, masked entries (<= masked_below) are set to 0 on both sides, and the
    mean runs over every remaining entry."""
    if student.shape != teacher.shape:
        raise ValueError(f"attention scores differ in shape: student {tuple(student.shape)}, "
                         f"teacher {tuple(teacher.shape)}")
    s = student[:, :, 1:, 1:].float()
    t = teacher[:, :, 1:, 1:].detach().float()
    if s.numel() == 0:
        return student.sum() * 0.0
    s = torch.where(s <= masked_below, torch.zeros_like(s), s)
    t = torch.where(t <= masked_below, torch.zeros_like(t), t)
    return F.mse_loss(s, t)
