"""A language model's own LM head, applied to any hidden state the way the model applies it.

Hugging Face returns `hidden_states[L]` (the last layer) already passed through the base model's
final norm (it equals `last_hidden_state`), and `hidden_states[k]` for k < L without it. So reading
hidden state k through the model's own head means:

    logits = output_head(final_norm(h))   for k < L
    logits = output_head(h)               for k = L

where `final_norm` is the base model's last module (`model.norm` for Llama-style models,
`transformer.ln_f` for GPT-2; BERT-style encoders have none, their layers end in a LayerNorm) and
`output_head` is what the *ForCausalLM / *ForMaskedLM class puts after the base model: `lm_head`
(Llama, GPT-2; RoBERTa's includes its dense + LayerNorm transform) or `cls` (BERT: the
`predictions` transform, i.e. dense, activation, LayerNorm, then the decoder). With the filter set
to the identity, `hidden_states[L]` read this way gives the model's own logits exactly (tested).

Used by TED on language models (recipes/ted.py): each filter's output is read through the frozen
head, so stage I learns a filter per layer that makes the layer predict the next (or masked) token,
the idea of a "tuned lens" (Belrose et al., 2023).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f")  # on the base model
OUTPUT_HEADS = ("lm_head", "cls")  # on the *ForCausalLM / *ForMaskedLM model


@dataclass
class LMHead:
    """The frozen pieces of a model's LM head. Not an nn.Module on purpose: a recipe that holds one
    never registers (and so never trains or saves) the model's own weights.

    final_norm: the base model's final norm, or None (post-LN encoders such as BERT).
    output:     hidden [..., width] -> logits [..., vocab].
    width:      the hidden size it reads.
    num_layers: L; hidden_states[L] is already normalised.
    """

    final_norm: nn.Module | None
    output: nn.Module
    width: int
    num_layers: int

    def __call__(self, states: torch.Tensor, position: int) -> torch.Tensor:
        """Logits [..., V] of states [..., width] standing in for hidden_states[position]."""
        if self.final_norm is not None and position < self.num_layers:
            states = self.final_norm(states)
        return self.output(states)

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.final_norm, self.output) if m is not None]

    def to(self, device) -> "LMHead":
        for module in self.modules():
            if next(module.parameters(), torch.empty(0)).device != torch.device(device):
                module.to(device)
        return self


def find_lm_head(model: nn.Module) -> LMHead | None:
    """The LM head of a *ForCausalLM / *ForMaskedLM model, or None when it has no head this module
    knows (see OUTPUT_HEADS)."""
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        return None
    output = next((getattr(model, n) for n in OUTPUT_HEADS if isinstance(getattr(model, n, None), nn.Module)), None)
    if output is None:
        return None
    norm = next((getattr(base, n) for n in FINAL_NORMS if isinstance(getattr(base, n, None), nn.Module)), None)
    return LMHead(norm, output, int(model.config.hidden_size), int(model.config.num_hidden_layers))
