"""One `Features` view of any Hugging Face model output, so losses never look at model types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TopKLogits:
    """A teacher's logits over a large vocabulary, kept sparse: the k largest per row and the
    log-sum-exp of all the others (the tail), at the temperature they were cached for.

    values:   [..., k] the k largest logits (raw, not divided by the temperature).
    indices:  [..., k] their vocabulary ids (int64).
    tail_lse: [...] log sum_{j not in top-k} exp(z_j / T), with T = `temperature`.
    """

    values: torch.Tensor
    indices: torch.Tensor
    tail_lse: torch.Tensor
    temperature: float

    def __getitem__(self, index) -> "TopKLogits":
        return TopKLogits(self.values[index], self.indices[index], self.tail_lse[index], self.temperature)

    @property
    def shape(self) -> torch.Size:
        return self.values.shape[:-1]

    def detach(self) -> "TopKLogits":
        return self


@dataclass
class Features:
    """What a recipe's loss sees of one forward pass.

    logits:        task logits: [B, C] classification, [B, L, C] tokens, [B, L, 2] QA (start, end),
                   [B, L, V] language modelling; a `TopKLogits` for a cached LM teacher; None when the
                   stage did not ask for logits from a cache.
    hidden_states: (embeddings, layer 1, ..., layer N), each [B, L, H]; entries the stage did not ask
                   for may be None (a cached teacher holds only the declared layers); () if none asked.
    attentions:    per layer [B, heads, L, L] attention probabilities, or None if not requested.
    mask:          [B, L] 1 for real tokens, 0 for padding.
    task_loss:     the model's own loss on the gold labels in the batch, or None without labels.
    extras:        anything a recipe's own forward adds (e.g. the outputs of a second, pruned pass).
    """

    logits: Any
    hidden_states: tuple[torch.Tensor | None, ...]
    attentions: tuple[torch.Tensor, ...] | None
    mask: torch.Tensor
    task_loss: torch.Tensor | None
    extras: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.hidden_states) - 1


def batch_mask(batch: dict) -> torch.Tensor:
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones(batch["input_ids"].shape, dtype=torch.long, device=batch["input_ids"].device)
    return mask


def features_from_output(output, batch: dict) -> Features:
    if getattr(output, "start_logits", None) is not None:
        logits = torch.stack([output.start_logits, output.end_logits], dim=-1)
    else:
        logits = output.logits
    return Features(
        logits=logits,
        hidden_states=tuple(output.hidden_states or ()),
        attentions=tuple(output.attentions) if getattr(output, "attentions", None) else None,
        mask=batch_mask(batch),
        task_loss=getattr(output, "loss", None),
    )
