"""One `Features` view of any Hugging Face model output, so losses never look at model types."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Features:
    """What a recipe's loss sees of one forward pass.

    logits:        task logits: [B, C] classification, [B, L, C] tokens, [B, L, 2] QA (start, end),
                   [B, L, V] language modelling.
    hidden_states: (embeddings, layer 1, ..., layer N), each [B, L, H].
    attentions:    per layer [B, heads, L, L] attention probabilities, or None if not requested.
    mask:          [B, L] 1 for real tokens, 0 for padding.
    task_loss:     the model's own loss on the gold labels in the batch, or None without labels.
    """

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...]
    attentions: tuple[torch.Tensor, ...] | None
    mask: torch.Tensor
    task_loss: torch.Tensor | None

    @property
    def num_layers(self) -> int:
        return len(self.hidden_states) - 1


def features_from_output(output, batch: dict) -> Features:
    if getattr(output, "start_logits", None) is not None:
        logits = torch.stack([output.start_logits, output.end_logits], dim=-1)
    else:
        logits = output.logits
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones(batch["input_ids"].shape, dtype=torch.long, device=batch["input_ids"].device)
    return Features(
        logits=logits,
        hidden_states=tuple(output.hidden_states or ()),
        attentions=tuple(output.attentions) if getattr(output, "attentions", None) else None,
        mask=mask,
        task_loss=getattr(output, "loss", None),
    )
