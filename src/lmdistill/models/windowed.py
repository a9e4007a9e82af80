"""A teacher that reads inputs longer than its positions in overlapping windows.

An efficient student reads a whole document (say 4,096 tokens) in one pass; its 512-position
teacher cannot. `WindowedTeacher` takes the student's batch as it is, cuts each row into windows
the teacher can read, runs the teacher on all of them, and merges the per-token outputs (logits,
start/end logits, hidden states) back to the student's positions: each token takes the output of
the window in which it is farthest from an edge (the centre of a window wins, as for NER
predictions). So a distillation loss compares student and teacher token by token, unchanged.

A row is [prefix] body [suffix]: the prefix is repeated in every window (single sequences: [CLS];
question answering: [CLS] question [SEP], the real tokens of type 0), the suffix is the last real
token ([SEP]), and the body is cut into windows overlapping by `overlap` tokens. Prefix outputs
come from the row's first window, the suffix's from its last, with one exception for question
answering: the [CLS] start/end logits, which score "no answer in this window", come from the window
with the lowest [CLS] score (start + end), the null score of the SQuAD v2 post-processing. Taken from
the first window, they would say "no answer" for every row whose answer lies further on, and a
distilled student would learn to point at [CLS] (on COVID-QA rows of 4,096 tokens the first window's
[CLS] was the merged argmax of every row checked). Batches that fit are run as they are.
Attentions cannot be merged (a window sees only part of the row): asking for them is an error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmdistill.errors import ConfigError
from lmdistill.tasks.windows import centre_scores, spans

SEQUENCE_OUTPUTS = ("logits", "start_logits", "end_logits")


class WindowedTeacher(nn.Module):
    """model: a token-level task model (token classification, QA, masked LM) with `window` positions."""

    def __init__(self, model: nn.Module, window: int, overlap: int, pair: bool = False, chunk: int = 16):
        super().__init__()
        self.model = model
        self.window, self.overlap, self.pair, self.chunk = window, overlap, pair, chunk

    @property
    def config(self):
        return self.model.config

    @property
    def cache_id(self) -> str:
        """What makes its outputs differ from the plain teacher's (for a teacher-output cache key)."""
        return f"windowed:{self.window}:{self.overlap}:{'pair:null-min' if self.pair else 'single'}"

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False,
                output_attentions=False, labels=None, start_positions=None, end_positions=None, **kwargs):
        """Same inputs and outputs as the wrapped model; logits / start_logits / end_logits [B, L(, C)]
        and hidden states [B, L, H] at the caller's positions (padding positions are zero)."""
        targets = {"labels": labels, "start_positions": start_positions, "end_positions": end_positions}
        targets = {k: v for k, v in targets.items() if v is not None}
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        inputs = {k: v for k, v in inputs.items() if v is not None}
        if input_ids.shape[1] <= self.window:
            return self.model(**inputs, **targets, output_hidden_states=output_hidden_states,
                              output_attentions=output_attentions)
        if output_attentions:
            raise ConfigError("recipe: this stage reads the teacher's attentions, which a teacher reading a long "
                              "input in windows cannot give; use a recipe without attention maps")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        plans = [self._plan(attention_mask[b], token_type_ids[b]) for b in range(input_ids.shape[0])]
        jobs = [(b, positions) for b, plan in enumerate(plans) for positions in plan["windows"]]
        outputs, output_class = self._run(jobs, input_ids, token_type_ids, output_hidden_states)
        merged = {name: self._merge(value, plans, input_ids.shape[1], layered=name == "hidden_states")
                  for name, value in outputs.items()}
        if self.pair and "start_logits" in outputs and "end_logits" in outputs:
            self._null_from_lowest(merged, outputs, plans)
        if "hidden_states" in merged:
            merged["hidden_states"] = tuple(merged["hidden_states"].unbind(1))
        loss = _task_loss(merged, targets)
        return output_class(loss=loss, **merged)

    def _plan(self, mask, types) -> dict:
        """The positions each window of one row reads, and for each real position the (window, offset)
        whose output it takes."""
        real = torch.nonzero(mask.bool(), as_tuple=False).flatten().tolist()
        prefix = [p for p in real if int(types[p]) == 0] if self.pair else real[:1]
        suffix = real[-1:]
        taken = set(prefix) | set(suffix)
        body = [p for p in real if p not in taken]
        size = self.window - len(prefix) - len(suffix)
        if size <= self.overlap:
            raise ConfigError(
                f"the teacher's windows of {self.window} tokens leave {size} tokens besides the {len(prefix) + 1} "
                f"tokens repeated in each (special tokens, the question), no more than the overlap of "
                f"{self.overlap}; lower task.doc_stride or shorten the questions")
        windows, owner, best = [], {}, {}
        for w, (start, end) in enumerate(spans(len(body), size, self.overlap) if body else [(0, 0)]):
            windows.append(prefix + body[start:end] + suffix)
            for k, score in enumerate(centre_scores(start, end, len(body))):
                if score > best.get(body[start + k], -1):
                    best[body[start + k]] = score
                    owner[body[start + k]] = (w, len(prefix) + k)
        for k, position in enumerate(prefix):
            owner[position] = (0, k)
        owner[suffix[0]] = (len(windows) - 1, len(windows[-1]) - 1)
        return {"windows": windows, "owner": owner}

    def _run(self, jobs, input_ids, token_type_ids, output_hidden_states):
        """Run the teacher on every window, `chunk` at a time. Returns ({name: [N, W, ...] tensor},
        the wrapped model's output class); hidden states are stacked as [N, layers + 1, W, H]."""
        collected: dict[str, list[torch.Tensor]] = {}
        output_class = None
        for first in range(0, len(jobs), self.chunk):
            part = jobs[first:first + self.chunk]
            width = max(len(positions) for _, positions in part)
            ids = input_ids.new_full((len(part), width), int(self.config.pad_token_id or 0))
            types = torch.zeros_like(ids)
            mask = torch.zeros_like(ids)
            for i, (b, positions) in enumerate(part):
                index = torch.tensor(positions, device=input_ids.device)
                ids[i, :len(positions)] = input_ids[b, index]
                types[i, :len(positions)] = token_type_ids[b, index]
                mask[i, :len(positions)] = 1
            output = self.model(input_ids=ids, attention_mask=mask, token_type_ids=types,
                                output_hidden_states=output_hidden_states)
            output_class = type(output)
            for name in SEQUENCE_OUTPUTS:
                value = getattr(output, name, None)
                if value is not None:
                    collected.setdefault(name, []).append(_pad_to(value, self.window))
            if output_hidden_states:
                stacked = torch.stack(output.hidden_states, dim=1)  # [n, layers + 1, W, H]
                collected.setdefault("hidden_states", []).append(_pad_to(stacked, self.window, dim=2))
        return {name: torch.cat(parts) for name, parts in collected.items()}, output_class

    @staticmethod
    def _null_from_lowest(merged: dict, outputs: dict, plans) -> None:
        """[CLS] (each row's first prefix position) takes its start/end logits from the row's window
        with the lowest [CLS] start + end score."""
        base = 0
        for b, plan in enumerate(plans):
            n = len(plan["windows"])
            null = outputs["start_logits"][base:base + n, 0] + outputs["end_logits"][base:base + n, 0]
            lowest = base + int(null.argmin())
            position = min(plan["owner"])  # [CLS]: the first real position, in the prefix
            for name in ("start_logits", "end_logits"):
                merged[name][b, position] = outputs[name][lowest, 0]
            base += n

    def _merge(self, value: torch.Tensor, plans, length: int, layered: bool = False) -> torch.Tensor:
        """[N windows, W, ...] -> [B, length, ...] by the owners; layered (hidden states):
        [N, layers, W, H] -> [B, layers, length, H]."""
        hidden = layered
        shape = (len(plans), value.shape[1], length, *value.shape[3:]) if hidden else (len(plans), length,
                                                                                          *value.shape[2:])
        out = value.new_zeros(shape)
        base = 0
        for b, plan in enumerate(plans):
            positions = torch.tensor(sorted(plan["owner"]), device=value.device)
            window = torch.tensor([base + plan["owner"][p][0] for p in sorted(plan["owner"])], device=value.device)
            offset = torch.tensor([plan["owner"][p][1] for p in sorted(plan["owner"])], device=value.device)
            if hidden:
                out[b][:, positions] = value[window, :, offset].transpose(0, 1)
            else:
                out[b][positions] = value[window, offset]
            base += len(plan["windows"])
        return out


def _pad_to(value: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    extra = width - value.shape[dim]
    if extra <= 0:
        return value
    pad = [0, 0] * (value.dim() - dim - 1) + [0, extra]
    return F.pad(value, pad)


def _task_loss(merged: dict, targets: dict) -> torch.Tensor | None:
    """The task loss on the merged outputs (token labels, or QA start/end positions), as HF computes it."""
    if "labels" in targets and "logits" in merged:
        logits = merged["logits"]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets["labels"].reshape(-1), ignore_index=-100)
    if "start_positions" in targets and "start_logits" in merged:
        length = merged["start_logits"].shape[1]
        losses = [F.cross_entropy(merged[f"{side}_logits"], targets[f"{side}_positions"].clamp(0, length),
                                  ignore_index=length) for side in ("start", "end")]
        return sum(losses) / 2
    return None
