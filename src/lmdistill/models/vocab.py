"""GLMD vocabulary compression: rank the tokens, keep the most frequent, map the rest, shrink the model.

The method (Tan et al. 2023, official code aitsc/GLMKD `vocab_sort.py`, `build_map_vocab_for_student`):

1. Rank the tokens by their frequency on a corpus; tokens that must survive (special tokens, verbalizer
   tokens) go first.
2. Keep K of the V tokens: `keep` is a fraction of V or a count, rounded up to a multiple of 64.
3. Map every dropped token to a kept *substitute*: the kept token whose teacher input embedding has the
   largest dot product with the dropped token's (`dot`, as the official code's "decoder" method);
   `cosine` uses cosine similarity; `unk` sends every dropped token to the unknown token.
4. Shrink the student: its input embedding and its LM head (tied or not, with its bias) keep only the
   kept rows. New id k is the token with original id `kept_ids[k]`; kept ids stay in their original order,
   so special tokens at the start of the vocabulary keep their ids.

Two things are ours, both because the saved student must work with a plain tokenizer file
(see `vocab_tokenizer.py`): every single-character token is kept too (so any text can still be
tokenized), and for BPE the kept set is closed under merges (a kept token's two parts are kept, so a kept
token stays reachable). The distillation loss reads the teacher only at the kept columns
(`losses.kept_kd_kl`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmdistill.errors import ConfigError

SUBSTITUTE_METHODS = ("dot", "cosine", "unk")
MAP_FILE = "vocab_map.json"


@dataclass
class VocabMap:
    """Which tokens survive and what every original id becomes.

    kept_ids:   [K] original id of each new id (ascending).
    old_to_new: [V] new id of each original id; a dropped id gets its substitute's new id.
    method:     how substitutes were chosen (dot | cosine | unk).
    """

    kept_ids: torch.Tensor
    old_to_new: torch.Tensor
    method: str = "dot"

    @property
    def original_size(self) -> int:
        return int(self.old_to_new.numel())

    @property
    def kept_size(self) -> int:
        return int(self.kept_ids.numel())

    @property
    def kept_mask(self) -> torch.Tensor:
        """[V] True where the original token is kept."""
        mask = torch.zeros(self.original_size, dtype=torch.bool)
        mask[self.kept_ids] = True
        return mask

    @property
    def substitutes(self) -> torch.Tensor:
        """[V] the original id each original id becomes (itself when kept)."""
        return self.kept_ids[self.old_to_new]

    def to_new(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Original ids -> new ids (dropped ids become their substitutes), any shape."""
        return self.old_to_new.to(input_ids.device)[input_ids]

    def to_original(self, new_ids: torch.Tensor) -> torch.Tensor:
        return self.kept_ids.to(new_ids.device)[new_ids]

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / MAP_FILE
        path.write_text(json.dumps({"original_size": self.original_size, "kept_size": self.kept_size,
                                    "method": self.method, "kept_ids": self.kept_ids.tolist(),
                                    "substitutes": self.substitutes.tolist()}))
        return path

    @classmethod
    def from_substitutes(cls, kept_ids: torch.Tensor, substitutes: torch.Tensor, method: str = "dot") -> "VocabMap":
        """From kept ids [K] (ascending) and the original substitute id of every original id [V]."""
        kept_ids = torch.as_tensor(kept_ids, dtype=torch.long)
        new_of_kept = torch.full((len(substitutes),), -1, dtype=torch.long)
        new_of_kept[kept_ids] = torch.arange(len(kept_ids))
        return cls(kept_ids, new_of_kept[torch.as_tensor(substitutes, dtype=torch.long)], method)

    @classmethod
    def load(cls, folder: str | Path) -> "VocabMap":
        data = json.loads((Path(folder) / MAP_FILE).read_text())
        return cls.from_substitutes(torch.tensor(data["kept_ids"]), torch.tensor(data["substitutes"]), data["method"])


def resolve_keep(keep: float, vocab_size: int, multiple: int = 64, key: str = "recipe.vocab_keep") -> int:
    """How many tokens to keep: a fraction in (0, 1] of `vocab_size`, or a count (> 1), rounded up to a
    multiple of `multiple` and capped at `vocab_size`."""
    if not keep > 0:
        raise ConfigError(f"{key}: {keep} is outside (0, 1]; give a fraction of the vocabulary or a token count")
    if keep <= 1:
        wanted = keep * vocab_size
    else:
        if keep != int(keep):
            raise ConfigError(f"{key}: {keep} is outside (0, 1] and not a whole token count")
        if keep > vocab_size:
            raise ConfigError(f"{key}: {int(keep)} tokens is larger than the vocabulary ({vocab_size} tokens)")
        wanted = keep
    return min(vocab_size, int(math.ceil(wanted / multiple) * multiple))


def count_tokens(tokenizer, texts: list[str], vocab_size: int, batch: int = 1000) -> torch.Tensor:
    """[V] how often each token id occurs when `texts` are tokenized (no special tokens added)."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for begin in range(0, len(texts), batch):
        ids = tokenizer(texts[begin:begin + batch], add_special_tokens=False, verbose=False)["input_ids"]
        flat = torch.tensor([i for row in ids for i in row], dtype=torch.long)
        if flat.numel():
            counts += torch.bincount(flat, minlength=vocab_size)[:vocab_size]
    return counts


def select_kept(counts: torch.Tensor, keep: int, forced: list[int] | set[int] = (),
                parts: dict[int, tuple[int, int]] | None = None) -> torch.Tensor:
    """The ids to keep, ascending: every `forced` id, then the most frequent others (ties: lower id first)
    until `keep` ids are chosen. With `parts` (BPE: token -> the two tokens its merge joins), a token
    is only kept together with its parts, recursively, so the kept set stays closed under merges; a
    token whose parts no longer fit is skipped. Raises ConfigError when the forced ids alone exceed `keep`."""
    parts = parts or {}
    kept: set[int] = set()
    order: list[int] = []

    def closure(token: int) -> list[int]:
        needed, stack, seen = [], [token], set()
        while stack:
            t = stack.pop()
            if t in kept or t in seen:
                continue
            seen.add(t)
            needed.append(t)
            stack.extend(parts.get(t, ()))
        return needed

    forced_all: list[int] = []
    for token in sorted(set(int(t) for t in forced)):
        for t in closure(token):
            if t not in kept:
                kept.add(t)
                forced_all.append(t)
    if len(kept) > keep:
        raise ConfigError(
            f"recipe.vocab_keep: {keep} tokens cannot hold the {len(kept)} tokens that must be kept "
            f"(special, verbalizer and single-character tokens); keep more")
    ranking = sorted(range(len(counts)), key=lambda i: (-int(counts[i]), i))
    for token in ranking:
        if len(kept) >= keep:
            break
        if token in kept:
            continue
        needed = closure(token)
        if len(kept) + len(needed) <= keep:
            kept.update(needed)
            order.extend(needed)
    return torch.tensor(sorted(kept), dtype=torch.long)


@torch.no_grad()
def choose_substitutes(embeddings: torch.Tensor, kept_ids: torch.Tensor, method: str = "dot",
                       unk_id: int | None = None, chunk: int = 2048) -> torch.Tensor:
    """[V] the original id each token maps to: itself when kept; for a dropped token, the kept token
    with the largest dot product (`dot`) or cosine similarity (`cosine`) of input embeddings, or the
    unknown token (`unk`).

    embeddings: [V, H] the teacher's input embedding matrix; kept_ids: [K] original ids."""
    if method not in SUBSTITUTE_METHODS:
        raise ConfigError(f"recipe.vocab_substitute: '{method}' is not one of {', '.join(SUBSTITUTE_METHODS)}")
    vocab_size = embeddings.shape[0]
    result = torch.arange(vocab_size)
    kept_mask = torch.zeros(vocab_size, dtype=torch.bool)
    kept_mask[kept_ids] = True
    dropped = (~kept_mask).nonzero().flatten()
    if dropped.numel() == 0:
        return result
    if method == "unk":
        if unk_id is None or not kept_mask[unk_id]:
            raise ConfigError("recipe.vocab_substitute: 'unk' needs a tokenizer with an unknown token; use dot or cosine")
        result[dropped] = unk_id
        return result
    emb = embeddings.detach().float()
    kept = emb[kept_ids]
    if method == "cosine":
        kept = kept / kept.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    for begin in range(0, dropped.numel(), chunk):
        rows = emb[dropped[begin:begin + chunk]]
        if method == "cosine":
            rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        result[dropped[begin:begin + chunk]] = kept_ids[(rows @ kept.T).argmax(-1)]
    return result


def build_vocab_map(kept_ids: torch.Tensor, embeddings: torch.Tensor, method: str = "dot",
                    unk_id: int | None = None) -> VocabMap:
    """A VocabMap from the kept ids and the teacher's input embeddings [V, H]."""
    kept_ids = torch.as_tensor(kept_ids, dtype=torch.long).sort().values
    return VocabMap.from_substitutes(kept_ids, choose_substitutes(embeddings, kept_ids, method, unk_id), method)


def _replace_parameter(model: nn.Module, old: nn.Parameter, new: nn.Parameter) -> None:
    """Put `new` wherever `old` is registered (tied weights share one Parameter object)."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is old:
                module._parameters[name] = new


def shrink_model(model: nn.Module, vmap: VocabMap) -> nn.Module:
    """Keep only the rows of `vmap.kept_ids` in the input embedding and the LM head (weight and bias),
    in place; tied weights stay tied. The config's vocab_size and special-token ids follow."""
    kept = vmap.kept_ids
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if embedding.weight.shape[0] != vmap.original_size:
        raise ConfigError(f"vocab: the model has {embedding.weight.shape[0]} input embeddings, the vocabulary map "
                          f"{vmap.original_size}")
    tied = head is not None and head.weight is embedding.weight
    old_in = embedding.weight
    _replace_parameter(model, old_in, nn.Parameter(old_in.detach()[kept].clone(), requires_grad=old_in.requires_grad))
    embedding.num_embeddings = len(kept)
    if getattr(embedding, "padding_idx", None) is not None:
        embedding.padding_idx = int(vmap.old_to_new[embedding.padding_idx])
    if head is not None:
        if not tied:
            old = head.weight
            _replace_parameter(model, old, nn.Parameter(old.detach()[kept].clone(), requires_grad=old.requires_grad))
        if getattr(head, "bias", None) is not None:
            old = head.bias
            _replace_parameter(model, old, nn.Parameter(old.detach()[kept].clone(), requires_grad=old.requires_grad))
        if hasattr(head, "out_features"):
            head.out_features = len(kept)
    remap_config_ids(model.config, vmap)
    if getattr(model, "generation_config", None) is not None:
        remap_config_ids(model.generation_config, vmap)
    return model


TOKEN_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id", "sep_token_id", "cls_token_id",
                 "mask_token_id", "decoder_start_token_id")


def remap_config_ids(config, vmap: VocabMap) -> None:
    """vocab_size and special-token ids of a model or generation config, in the new numbering."""
    if hasattr(config, "vocab_size"):
        config.vocab_size = vmap.kept_size
    for key in TOKEN_ID_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and 0 <= value < vmap.original_size:
            setattr(config, key, int(vmap.old_to_new[value]))
        elif isinstance(value, list):
            setattr(config, key, [int(vmap.old_to_new[v]) if 0 <= v < vmap.original_size else v for v in value])


def parameter_split(model: nn.Module) -> dict[str, int]:
    """Parameters in the vocabulary matrices (input embedding, LM head and its bias; a tied head counted
    once) and in the rest of the model."""
    seen, embedding = set(), 0
    rows = model.get_input_embeddings().weight.shape[0]
    candidates = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None:
        candidates += [head.weight] + ([head.bias] if getattr(head, "bias", None) is not None else [])
    for param in candidates:
        if id(param) not in seen and param.shape[0] == rows:
            seen.add(id(param))
            embedding += param.numel()
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return {"total": total, "embedding": embedding, "rest": total - embedding}
