"""Token pruning for BERT-family encoders (LAD, after PoWER-BERT and the Length-Adaptive Transformer).

After the self-attention of layer i, every token is scored by the attention it receives (softmax
probabilities summed over heads and over the real query positions; padding scores below every real
token); the first token ([CLS] / <s>) is always kept, and the L_i best are kept in their original
order. The attention output projection, the FFN and every later layer see only the kept tokens: the
tensors are physically gathered (shorter), so later layers cost less. The attention mask is gathered
the same way. Token-level outputs are restored to the full length: a dropped token keeps the hidden
state it had when it was dropped (its input to the layer that dropped it).

A **length configuration** says how many tokens each layer keeps; lengths are per batch (LAT style),
so a batch stays rectangular and its padding is dropped first. Forms (`resolve_lengths`):
  float r in (0, 1]      keep ratio at every layer: L_i = max(min_tokens, ceil(r * L_{i-1})), L_0 = input length
  [n_1, ..., n_N] ints   at most n_i tokens after layer i (fewer when the input is shorter)
  [f_1, ..., f_N] floats fractions of the input length: L_i = max(min_tokens, ceil(f_i * L_0))
Lists must have one entry per layer and must not grow from one layer to the next.

Models. `PrunableBertModel` / `PrunableRobertaModel` and their `...ForSequenceClassification` /
`...ForTokenClassification` heads are the transformers classes with this forward: the same modules,
so any BERT / RoBERTa (MiniLM is a BERT) checkpoint loads unchanged, and with keep ratio 1.0 the
outputs equal the original model's. Their config (`PrunableBertConfig`, model type `prunable-bert`;
`PrunableRobertaConfig`, `prunable-roberta`) holds the default length configuration
(`length_config`, `keep_ratio`, `min_tokens`). Importing this module registers them with AutoConfig
and AutoModel / AutoModelForSequenceClassification / AutoModelForTokenClassification:

    import lmdistill.models.pruning  # registers the prunable classes
    model = AutoModelForSequenceClassification.from_pretrained("out/student")
    model(**batch)                          # the saved default length configuration
    model(**batch, length_config=0.4)       # or a keep ratio / per-layer lengths per call
    model.set_length_config([0.8, 0.5, 0.3])  # or a new default

Extra outputs, only when asked (forward kwargs): `output_attention_scores` (pre-softmax scores with
the mask added, [B, heads, L_in, L_in] per layer) and `output_qk` (per-layer queries and keys split
into heads, [B, heads, L_in, head_dim]); True for every layer or a collection of layer numbers
(1-based, as in hidden_states). The base model returns a `PrunedEncoderOutput`, which also holds the
original positions of the tokens entering each layer and kept after the last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from lmdistill.errors import ConfigError

PRUNING_DEFAULTS = {"keep_ratio": 1.0, "length_config": None, "min_tokens": 2}


# ---- length configurations ------------------------------------------------------------------------

def check_keep_ratio(ratio, key: str) -> float:
    """A keep ratio must be a number in (0, 1]; ConfigError naming `key` otherwise."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ConfigError(f"{key}: {ratio!r} is not a keep ratio; give a number in (0, 1]")
    return float(ratio)


def check_length_config(spec, num_layers: int, key: str):
    """Validate a length configuration (see the module docstring) for a `num_layers`-layer model.
    Returns it normalised: None, a float keep ratio, or a tuple of ints or of floats."""
    if spec is None:
        return None
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return check_keep_ratio(spec, key)
    if isinstance(spec, str) or not isinstance(spec, Sequence):
        raise ConfigError(f"{key}: {spec!r} is not a length configuration (a keep ratio or one length per layer)")
    values = list(spec)
    if len(values) != num_layers:
        raise ConfigError(f"{key}: {values} has {len(values)} entries, but the model has {num_layers} layers "
                          "(give one length per layer)")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ConfigError(f"{key}: {values} holds a value that is not a number")
    if all(isinstance(v, int) for v in values):
        if min(values) < 1:
            raise ConfigError(f"{key}: {values}: every layer keeps at least 1 token")
    elif not all(0 < v <= 1 for v in values):
        raise ConfigError(f"{key}: {values}: give token counts (integers) or fractions of the input length in (0, 1]")
    for i in range(1, len(values)):
        if values[i] > values[i - 1]:
            raise ConfigError(f"{key}: {values} grows from layer {i} ({values[i - 1]}) to layer {i + 1} "
                              f"({values[i]}); a layer cannot keep more tokens than the one before it")
    return tuple(values) if all(isinstance(v, int) for v in values) else tuple(float(v) for v in values)


def resolve_lengths(spec, input_length: int, num_layers: int, min_tokens: int = 2) -> list[int]:
    """The number of tokens each layer keeps for a batch of `input_length` (padded) tokens."""
    lengths, current = [], input_length
    floor = min(min_tokens, input_length)
    for i in range(num_layers):
        if spec is None:
            target = current
        elif isinstance(spec, float):
            target = max(floor, math.ceil(spec * current - 1e-9))
        elif isinstance(spec[i], int):
            target = spec[i]
        else:
            target = max(floor, math.ceil(spec[i] * input_length - 1e-9))
        current = max(1, min(current, target))
        lengths.append(current)
    return lengths


def sample_lengths(input_length: int, num_layers: int, ratios: Sequence[float], generator: torch.Generator | None = None,
                   min_tokens: int = 2, prune_last: bool = False) -> tuple[float, list[int]]:
    """LAD's per-step sample: a drop-ratio bound r from `ratios`, then L_i uniform in
    [ceil(L_{i-1} (1 - r)), L_{i-1}] (at least `min_tokens`); without `prune_last` the last layer keeps
    what the one before it kept, as in LAD's code. Returns (r, lengths)."""
    r = float(ratios[int(torch.randint(len(ratios), (1,), generator=generator))])
    lengths, current = [], input_length
    for i in range(num_layers):
        if i < num_layers - 1 or prune_last:
            low = min(current, max(min(min_tokens, current), math.ceil(current * (1 - r) - 1e-9)))
            current = int(torch.randint(low, current + 1, (1,), generator=generator))
        lengths.append(current)
    return r, lengths


# ---- the pruned forward ---------------------------------------------------------------------------

@dataclass
class PrunedEncoderOutput(BaseModelOutputWithPooling):
    """BaseModelOutputWithPooling (last_hidden_state and hidden_states restored to the full length) plus:

    layer_positions: per layer, [B, L_in] original positions of the tokens entering it.
    final_positions: [B, L_N] original positions of the tokens kept after the last layer.
    short_last_hidden_state: [B, L_N, H] the last layer's output as computed (kept tokens only).
    lengths: tokens kept after each layer.
    attention_scores / query_states / key_states: per layer (None where not asked), see the module docstring.
    """

    layer_positions: tuple | None = None
    final_positions: torch.Tensor | None = None
    short_last_hidden_state: torch.Tensor | None = None
    lengths: list | None = None
    attention_scores: tuple | None = None
    query_states: tuple | None = None
    key_states: tuple | None = None


def _wanted(flag, layer_number: int) -> bool:
    if flag is True:
        return True
    if not flag:
        return False
    return layer_number in flag


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, L, ...] -> [B, K, ...] at index [B, K]."""
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:]))


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] 1/0 -> [B, 1, 1, L] additive bias: 0 for real tokens, the dtype's minimum for padding (as HF)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def significance(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention received: probs [B, heads, Lq, Lk] summed over heads and real query rows -> [B, Lk];
    padding keys score -1, below every real token."""
    weights = mask.to(probs.dtype)[:, None, None, :].expand(-1, probs.shape[1], 1, -1)
    received = torch.matmul(weights, probs).sum(dim=(1, 2))  # one pass over the probabilities, as a matmul
    return received.masked_fill(mask == 0, -1.0)


def select_kept(scores: torch.Tensor, length: int) -> torch.Tensor:
    """Indices [B, length] of the first token plus the length - 1 best others, in their original order."""
    rest = scores[:, 1:].topk(length - 1, dim=1).indices + 1
    first = rest.new_zeros(rest.shape[0], 1)
    return torch.cat([first, rest], dim=1).sort(dim=1).values


def layer_forward(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, keep: int | None = None,
                  want_scores: bool = False, want_qk: bool = False, want_probs: bool = False) -> dict:
    """One BERT/RoBERTa layer on hidden [B, L, H] with mask [B, L] (1 real, 0 padding).

    keep: tokens to keep after the self-attention (None or L: no pruning). Returns a dict with
    `hidden` [B, keep, H], `index` [B, keep] (kept rows, or None), and when asked `scores`
    (pre-softmax + mask), `probs`, `q`, `k` on the L input tokens."""
    attn = layer.attention.self
    batch, length, _ = hidden.shape
    heads, head_dim = attn.num_attention_heads, attn.attention_head_size
    split = lambda x: x.view(batch, length, heads, head_dim).transpose(1, 2)  # noqa: E731
    q, k, v = split(attn.query(hidden)), split(attn.key(hidden)), split(attn.value(hidden))
    padded = not bool(mask.all())
    bias = additive_mask(mask, q.dtype) if padded else None  # without padding the bias is 0: skip the add
    prune = keep is not None and keep < length
    dropout = attn.dropout.p if attn.training else 0.0
    out = {"index": None}
    if prune or want_scores or want_probs:
        scores = torch.matmul(q * attn.scaling, k.transpose(-1, -2))  # scaling q: fewer products than the scores
        if padded:
            scores = scores + bias
        probs = scores.softmax(dim=-1)
        context = torch.matmul(F.dropout(probs, dropout, attn.training), v)
        if want_scores:
            out["scores"] = scores
        if want_probs:
            out["probs"] = probs
    else:  # no token is dropped here and nothing of the attention is asked for: the fused kernel
        probs = None
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=attn.scaling)
    if want_qk:
        out["q"], out["k"] = q, k
    context = context.transpose(1, 2).reshape(batch, length, heads * head_dim)
    residual = hidden
    if prune:
        index = select_kept(significance(probs, mask), keep)
        context, residual = gather_tokens(context, index), gather_tokens(residual, index)
        out["index"] = index
    attention_output = layer.attention.output(context, residual)
    out["hidden"] = layer.output(layer.intermediate(attention_output), attention_output)
    return out


def run_layers(layers: nn.ModuleList, hidden: torch.Tensor, mask: torch.Tensor, lengths: list[int] | None,
               output_hidden_states: bool = False, output_attentions: bool = False, output_attention_scores=False,
               output_qk=False) -> dict:
    """The encoder layers with token dropping and restore. hidden [B, L, H] embeddings, mask [B, L].
    Returns the fields of a PrunedEncoderOutput (except the pooler's)."""
    batch, length, _ = hidden.shape
    positions = torch.arange(length, device=hidden.device).expand(batch, length)
    restored = hidden  # dropped tokens keep the state they had when dropped
    dropped = []  # (positions [B, n], states [B, n, H]) per dropping layer, to restore the full length once
    all_hidden = [hidden] if output_hidden_states else None
    attentions, scores, queries, keys, layer_positions = [], [], [], [], []
    for i, layer in enumerate(layers):
        number = i + 1
        keep = lengths[i] if lengths is not None else None
        result = layer_forward(layer, hidden, mask, keep, _wanted(output_attention_scores, number),
                               _wanted(output_qk, number), output_attentions)
        layer_positions.append(positions)
        attentions.append(result.get("probs"))
        scores.append(result.get("scores"))
        queries.append(result.get("q"))
        keys.append(result.get("k"))
        index = result["index"]
        if index is not None:
            if not output_hidden_states:  # remember what is dropped here; restore once at the end
                gone = torch.ones_like(mask, dtype=torch.bool).scatter(1, index, False)
                count = hidden.shape[1] - index.shape[1]
                where = gone.nonzero()[:, 1].view(batch, count)
                dropped.append((gather_tokens(positions, where), gather_tokens(hidden, where)))
            positions, mask = gather_tokens(positions, index), gather_tokens(mask, index)
        hidden = result["hidden"]
        if output_hidden_states:
            restored = restored.scatter(1, positions.unsqueeze(-1).expand_as(hidden), hidden)
            all_hidden.append(restored)
    if not output_hidden_states:
        restored = torch.empty_like(restored) if dropped else hidden
        for where, states in dropped:
            restored = restored.scatter(1, where.unsqueeze(-1).expand_as(states), states)
        if dropped:
            restored = restored.scatter(1, positions.unsqueeze(-1).expand_as(hidden), hidden)
    return {
        "last_hidden_state": restored,
        "hidden_states": tuple(all_hidden) if output_hidden_states else None,
        "attentions": tuple(attentions) if output_attentions else None,
        "attention_scores": tuple(scores) if output_attention_scores else None,
        "query_states": tuple(queries) if output_qk else None,
        "key_states": tuple(keys) if output_qk else None,
        "layer_positions": tuple(layer_positions),
        "final_positions": positions,
        "short_last_hidden_state": hidden,
        "lengths": [p.shape[1] for p in layer_positions[1:]] + [positions.shape[1]],
    }


def encoder_forward(base: nn.Module, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                    inputs_embeds=None, length_config=None, min_tokens: int = 2, output_hidden_states: bool = False,
                    output_attentions: bool = False, output_attention_scores=False,
                    output_qk=False) -> PrunedEncoderOutput:
    """The pruned forward of any BERT-structured base model (`embeddings`, `encoder.layer`, optional
    `pooler`): used by the prunable classes and, unpruned, to read a plain teacher's scores and q/k."""
    embeddings = base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                                 inputs_embeds=inputs_embeds)
    batch, length = embeddings.shape[:2]
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=embeddings.device)
    layers = base.encoder.layer
    spec = check_length_config(length_config, len(layers), "length_config") if length_config is not None else None
    lengths = resolve_lengths(spec, length, len(layers), min_tokens) if spec is not None else None
    fields = run_layers(layers, embeddings, attention_mask, lengths, output_hidden_states, output_attentions,
                        output_attention_scores, output_qk)
    pooler = getattr(base, "pooler", None)
    pooled = pooler(fields["last_hidden_state"]) if pooler is not None else None
    return PrunedEncoderOutput(pooler_output=pooled, **fields)


# ---- HF classes ---------------------------------------------------------------------------------

class PrunableEncoderMixin:
    """The base-model forward with token dropping; the default length configuration is in the config."""

    def set_length_config(self, length_config) -> None:
        """A new default: a keep ratio, per-layer lengths, or None (keep every token)."""
        spec = check_length_config(length_config, self.config.num_hidden_layers, "length_config")
        if isinstance(spec, float):
            self.config.keep_ratio, self.config.length_config = spec, None
        else:
            self.config.keep_ratio, self.config.length_config = 1.0, list(spec) if spec else None

    def default_length_config(self):
        config = self.config
        if getattr(config, "length_config", None):
            return tuple(config.length_config)
        ratio = getattr(config, "keep_ratio", 1.0)
        return None if ratio in (None, 1.0) else float(ratio)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_hidden_states=None, output_attentions=None, return_dict=None,
                length_config=None, output_attention_scores=False, output_qk=False, **kwargs) -> PrunedEncoderOutput:
        """As BertModel.forward, plus `length_config` (default: the config's), `output_attention_scores`
        and `output_qk`. Always returns a PrunedEncoderOutput."""
        return encoder_forward(
            self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
            length_config if length_config is not None else self.default_length_config(),
            getattr(self.config, "min_tokens", 2),
            bool(output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states),
            bool(output_attentions if output_attentions is not None else self.config.output_attentions),
            output_attention_scores, output_qk,
        )


class PrunableHeadMixin:
    """A task head over a prunable base model: `length_config` and the extra flags go through to it."""

    def set_length_config(self, length_config) -> None:
        self.base_model.set_length_config(length_config)


class PrunableBertConfig(BertConfig):
    model_type = "prunable-bert"

    def __init__(self, keep_ratio: float = 1.0, length_config=None, min_tokens: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.keep_ratio, self.length_config, self.min_tokens = keep_ratio, length_config, min_tokens


class PrunableRobertaConfig(RobertaConfig):
    model_type = "prunable-roberta"

    def __init__(self, keep_ratio: float = 1.0, length_config=None, min_tokens: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.keep_ratio, self.length_config, self.min_tokens = keep_ratio, length_config, min_tokens


class PrunableBertModel(PrunableEncoderMixin, BertModel):
    config_class = PrunableBertConfig


class PrunableRobertaModel(PrunableEncoderMixin, RobertaModel):
    config_class = PrunableRobertaConfig


class PrunableBertForSequenceClassification(PrunableHeadMixin, BertForSequenceClassification):
    config_class = PrunableBertConfig

    def __init__(self, config):
        super().__init__(config)
        self.bert = PrunableBertModel(config)  # the same modules, the pruned forward
        self.post_init()


class PrunableBertForTokenClassification(PrunableHeadMixin, BertForTokenClassification):
    config_class = PrunableBertConfig

    def __init__(self, config):
        super().__init__(config)
        self.bert = PrunableBertModel(config, add_pooling_layer=False)
        self.post_init()


class PrunableRobertaForSequenceClassification(PrunableHeadMixin, RobertaForSequenceClassification):
    config_class = PrunableRobertaConfig

    def __init__(self, config):
        super().__init__(config)
        self.roberta = PrunableRobertaModel(config, add_pooling_layer=False)
        self.post_init()


class PrunableRobertaForTokenClassification(PrunableHeadMixin, RobertaForTokenClassification):
    config_class = PrunableRobertaConfig

    def __init__(self, config):
        super().__init__(config)
        self.roberta = PrunableRobertaModel(config, add_pooling_layer=False)
        self.post_init()


# model type -> (prunable config class, {plain class: prunable class})
PRUNABLE = {
    "bert": (PrunableBertConfig, {BertModel: PrunableBertModel,
                                  BertForSequenceClassification: PrunableBertForSequenceClassification,
                                  BertForTokenClassification: PrunableBertForTokenClassification}),
    "roberta": (PrunableRobertaConfig, {RobertaModel: PrunableRobertaModel,
                                        RobertaForSequenceClassification: PrunableRobertaForSequenceClassification,
                                        RobertaForTokenClassification: PrunableRobertaForTokenClassification}),
}
SUPPORTED = ", ".join(sorted(c.__name__ for _, classes in PRUNABLE.values() for c in classes))


def register() -> None:
    """Register the prunable classes with the transformers Auto* factories (idempotent)."""
    for config_class, classes in PRUNABLE.values():
        try:
            AutoConfig.register(config_class.model_type, config_class)
        except ValueError:  # already registered
            pass
        for plain, prunable in classes.items():
            auto = {BertModel: AutoModel, RobertaModel: AutoModel}.get(plain)
            if auto is None:
                auto = AutoModelForTokenClassification if "TokenClassification" in plain.__name__ else \
                    AutoModelForSequenceClassification
            try:
                auto.register(config_class, prunable, exist_ok=True)
            except ValueError:
                pass


register()


def is_prunable(model: nn.Module) -> bool:
    return isinstance(model, (PrunableEncoderMixin, PrunableHeadMixin))


def check_supported(model: nn.Module, key: str, role: str = "student") -> None:
    """ConfigError naming `key` unless `model` has a prunable implementation (or is one)."""
    if is_prunable(model):
        return
    kind = getattr(model.config, "model_type", "?")
    if kind not in PRUNABLE or type(model) not in PRUNABLE[kind][1]:
        raise ConfigError(f"{key}: the {role} is a {type(model).__name__} (model type '{kind}'), which has no "
                          f"prunable implementation; token pruning supports: {SUPPORTED}")


def check_encoder(model: nn.Module, key: str, role: str = "teacher") -> None:
    """ConfigError unless `model` is a BERT or RoBERTa (its scores and q/k can be read by encoder_forward)."""
    kind = getattr(model.config, "model_type", "?").removeprefix("prunable-")
    if kind not in PRUNABLE or getattr(model.config, "is_decoder", False):
        raise ConfigError(f"{key}: the {role} is a {type(model).__name__} (model type '{kind}'); this needs a "
                          f"BERT-family encoder ({', '.join(sorted(PRUNABLE))}): {SUPPORTED}")


def to_prunable(model: nn.Module, length_config=None, min_tokens: int = 2, key: str = "student") -> nn.Module:
    """The prunable version of a plain BERT / RoBERTa model, with the same weights (a new module; `model`
    is not changed). A prunable model is returned as it is, with its default length set when given."""
    if is_prunable(model):
        if length_config is not None:
            model.set_length_config(length_config)
        return model
    check_supported(model, key)
    config_class, classes = PRUNABLE[model.config.model_type]
    data = {k: v for k, v in model.config.to_dict().items() if k not in ("model_type", "architectures")}
    config = config_class.from_dict({**data, **PRUNING_DEFAULTS, "min_tokens": min_tokens})
    config._attn_implementation = "eager"  # the pruned forward computes attention itself
    parameter = next(model.parameters())
    pruned = classes[type(model)](config).to(device=parameter.device, dtype=parameter.dtype)
    pruned.load_state_dict(model.state_dict())
    pruned.train(model.training)
    for (name, old), new in zip(model.named_parameters(), pruned.parameters()):
        new.requires_grad_(old.requires_grad)
    if length_config is not None:
        pruned.set_length_config(length_config)
    return pruned


def capture_base_output(net: nn.Module, **inputs):
    """Run `net` (a prunable head model or base model) and also return its base model's
    PrunedEncoderOutput: (head output, base output)."""
    base = net.base_model
    captured = []
    handle = base.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        output = net(**inputs)
    finally:
        handle.remove()
    return output, captured[-1]


def position_ids_of(base: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The position ids the embeddings use for `input_ids` (RoBERTa counts from padding_idx + 1)."""
    embeddings = base.embeddings
    if hasattr(embeddings, "create_position_ids_from_input_ids"):
        return embeddings.create_position_ids_from_input_ids(input_ids, embeddings.padding_idx)
    return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
