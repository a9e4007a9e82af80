"""Efficient attention for students: convert a full-attention BERT into Longformer, BigBird,
Nyströmformer (transformers' own classes) or LSG (ours, `models/lsg.py`), after the review by
Brown et al. (EMNLP 2023 Industry): convert the model, then distil.

`student: {layers: [0, 2, 4], attention: {type: longformer, window: 256, max_length: 4096}}`

What the conversion does, per type (weights of the BERT, or of the layer subset cut from it):

- every encoder weight is copied under the target class's names; position embeddings are extended
  from the teacher's 512 to `max_length` by copying the learned ones over and over (Longformer's
  recipe): new position p = old position p mod 512;
- longformer: `LongformerFor<Task>`; the global projections (query/key/value_global) start as
  copies of the local ones; `window` is HF's `attention_window`;
- bigbird: `BigBirdFor<Task>`, `attention_type: block_sparse`, `block_size`, `num_random_blocks`;
- nystromformer: `NystromformerFor<Task>`, `num_landmarks`, `segment_means_seq_len = max_length`;
  the depthwise convolution skip on the values (HF's default kernel 65, a new weight) starts at zero;
- lsg: `LSGBertFor<Task>` (registered class; the same weights as BERT);
- full: `BertFor<Task>` with `max_length` positions (the full-attention baseline of the same depth).

Heads (checked by tests): token classification, QA and masked LM heads map one to one, except
BigBird's QA head, which has a feed-forward block before `qa_outputs` (it starts as a copy of the
last encoder layer's feed-forward block) and BigBird's and Nyströmformer's sequence classification
heads, which use the model's `hidden_act` where BERT's pooler uses tanh (dense and out_proj are
copied from BERT's pooler and classifier). Those heads differ from the teacher's until trained.

Behaviour that HF's classes leave to the caller is supplied in memory by `attach_runtime` (also
after loading a saved student through lmdistill); a user loading the folder with
`AutoModelFor<Task>` does the same by hand (README, "Efficient-attention students"):
longformer `global_attention_mask` (the `global` setting: [CLS], or the question tokens);
BigBird's switch to full attention on short inputs, which HF makes permanent, is undone before
each call, and its padded hidden states are cut back to the input length; Nyströmformer inputs
are padded to `segment_means_seq_len`, which HF requires, its padding mask is passed as [B, 1, 1, L]
(transformers 5 builds an L x L mask that breaks the landmark path), and its outputs are cut back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BigBirdConfig,
    BigBirdForMaskedLM,
    BigBirdForQuestionAnswering,
    BigBirdForSequenceClassification,
    BigBirdForTokenClassification,
    LongformerConfig,
    LongformerForMaskedLM,
    LongformerForQuestionAnswering,
    LongformerForSequenceClassification,
    LongformerForTokenClassification,
    NystromformerConfig,
    NystromformerForMaskedLM,
    NystromformerForQuestionAnswering,
    NystromformerForSequenceClassification,
    NystromformerForTokenClassification,
)

from lmdistill.errors import ConfigError
from lmdistill.models import lsg

DEFAULTS: dict[str, dict[str, Any]] = {
    "full": {},
    "longformer": {"window": 256},
    "bigbird": {"block_size": 64, "num_random_blocks": 3},
    "nystromformer": {"num_landmarks": 64},
    "lsg": {"block_size": 128, "sparse_factor": 4, "sparse_blocks": 1},
}
HEADS = {
    BertForSequenceClassification: "sequence",
    BertForTokenClassification: "token",
    BertForQuestionAnswering: "qa",
    BertForMaskedLM: "mlm",
}
TARGETS = {
    "full": (BertConfig, {"sequence": BertForSequenceClassification, "token": BertForTokenClassification,
                          "qa": BertForQuestionAnswering, "mlm": BertForMaskedLM}),
    "longformer": (LongformerConfig, {"sequence": LongformerForSequenceClassification,
                                      "token": LongformerForTokenClassification,
                                      "qa": LongformerForQuestionAnswering, "mlm": LongformerForMaskedLM}),
    "bigbird": (BigBirdConfig, {"sequence": BigBirdForSequenceClassification, "token": BigBirdForTokenClassification,
                                "qa": BigBirdForQuestionAnswering, "mlm": BigBirdForMaskedLM}),
    "nystromformer": (NystromformerConfig, {"sequence": NystromformerForSequenceClassification,
                                            "token": NystromformerForTokenClassification,
                                            "qa": NystromformerForQuestionAnswering,
                                            "mlm": NystromformerForMaskedLM}),
    "lsg": (lsg.LSGBertConfig, {"sequence": lsg.LSGBertForSequenceClassification,
                                "token": lsg.LSGBertForTokenClassification,
                                "qa": lsg.LSGBertForQuestionAnswering, "mlm": lsg.LSGBertForMaskedLM}),
}
SHARED_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "type_vocab_size",
               "initializer_range", "layer_norm_eps", "pad_token_id", "id2label", "label2id", "problem_type")
GLOBAL_ATTRIBUTE = "global_attention_tokens"  # saved in a Longformer student's config.json


def settings_of(attention) -> dict[str, Any]:
    """The attention settings with the type's defaults filled in (max_length may still be None)."""
    values = {k: v for k, v in attention.model_dump(by_alias=False).items() if v is not None}
    return {**DEFAULTS[attention.type], **values}


def check_block_rules(attention, max_length: int | None = None) -> None:
    """Raise ValueError naming the rule a window/block setting breaks (message read after the key
    `student.attention`). max_length: the resolved length when the config does not give one."""
    s = settings_of(attention)
    kind, length = attention.type, s.get("max_length", max_length)
    if kind == "longformer":
        window = s["window"]
        if window % 2:
            raise ValueError(f"window {window} is odd; Longformer's attention_window must be even "
                             "(window/2 tokens on each side)")
        if length is not None and window > length:
            raise ValueError(f"window {window} is larger than max_length {length}")
        if length is not None and length % window:
            raise ValueError(f"max_length {length} is not a multiple of window {window}; Longformer pads every "
                             "input to a multiple of attention_window, which must stay within the positions")
    elif kind == "bigbird":
        block, random = s["block_size"], s["num_random_blocks"]
        if length is not None and block > length:
            raise ValueError(f"block_size {block} is larger than max_length {length}")
        if length is not None and length % block:
            raise ValueError(f"max_length {length} is not a multiple of block_size {block}; BigBird pads every "
                             "input to a multiple of block_size, which must stay within the positions")
        smallest = (5 + 2 * random) * block
        if length is not None and length <= smallest:
            raise ValueError(
                f"max_length {length} is too short for BigBird's block-sparse attention: it needs more than "
                f"(5 + 2 x num_random_blocks) x block_size = {smallest} tokens and uses full attention below")
    elif kind == "nystromformer":
        landmarks = s["num_landmarks"]
        if length is not None and landmarks > length:
            raise ValueError(f"num_landmarks {landmarks} is larger than max_length {length}")
        if length is not None and length % landmarks:
            raise ValueError(f"max_length {length} is not a multiple of num_landmarks {landmarks}; Nystromformer "
                             "averages segments of segment_means_seq_len / num_landmarks tokens "
                             "(segment_means_seq_len = max_length)")
    elif kind == "lsg":
        block, factor = s["block_size"], s["sparse_factor"]
        if length is not None and block > length:
            raise ValueError(f"block_size {block} is larger than max_length {length}")
        if factor and block % factor:
            raise ValueError(f"block_size {block} is not a multiple of sparse_factor {factor}; LSG averages "
                             "sparse_factor tokens inside each block")


def positions(config) -> int | None:
    """How many tokens a model of this config reads (its position table minus any offset)."""
    limit = getattr(config, "max_position_embeddings", None)
    if not limit:
        return None
    model_type = str(getattr(config, "model_type", ""))
    if "roberta" in model_type or model_type == "longformer":  # positions start at padding_idx + 1
        return int(limit) - (int(getattr(config, "pad_token_id", 0) or 0) + 1)
    return int(limit)


def extend_positions(table: torch.Tensor, length: int, offset: int = 0, rows: int | None = None) -> torch.Tensor:
    """table [P, H] -> [rows, H] with row offset + p = table[p mod P] for p < length (Longformer's
    copy recipe); rows before `offset` (never used for real tokens) copy table[0]."""
    rows = rows or offset + length
    source = torch.arange(length) % table.shape[0]
    new = table[0].expand(rows, -1).clone()
    new[offset:offset + length] = table[source]
    return new


def _head_kind(model: nn.Module) -> str:
    for cls, kind in HEADS.items():
        if type(model) is cls:
            return kind
    return ""


def check_conversion(attention, model: nn.Module) -> dict[str, Any]:
    """All rules that need the teacher (run before anything is written). Returns the resolved settings."""
    config = model.config
    model_type = getattr(config, "model_type", "?")
    if model_type != "bert":
        raise ConfigError(
            f"student.attention: cannot convert a {model_type} model ({type(model).__name__}) to {attention.type} "
            "attention; supported: BERT-family encoders (model_type bert, learned absolute positions)")
    head = _head_kind(model)
    if not head:
        raise ConfigError(
            f"student.attention: {type(model).__name__} cannot be converted to {attention.type} attention; supported "
            "task kinds: classification, token-classification, question-answering, masked language-modeling")
    teacher_positions = positions(config)
    s = settings_of(attention)
    s.setdefault("max_length", teacher_positions)
    if s["max_length"] < teacher_positions:
        raise ConfigError(f"student.attention.max_length: {s['max_length']} is below the teacher's "
                          f"{teacher_positions} positions; an efficient student reads at least as far as its teacher")
    try:
        check_block_rules(attention, s["max_length"])
    except ValueError as err:
        raise ConfigError(f"student.attention: {err}") from None
    if "question" in s.get("global_tokens", []) and head != "qa":
        raise ConfigError("student.attention.global: 'question' is for question answering only")
    if attention.type in ("longformer", "lsg") and "global_tokens" not in s:
        s["global_tokens"] = ["question"] if head == "qa" else ["cls"]
    return s


def _target_config(kind: str, source, s: dict, tokenizer) -> Any:
    config_class, _ = TARGETS[kind]
    shared = {k: getattr(source, k) for k in SHARED_KEYS if hasattr(source, k)}
    length = s["max_length"]
    special = {"sep_token_id": getattr(tokenizer, "sep_token_id", None),
               "bos_token_id": getattr(tokenizer, "cls_token_id", None),
               "eos_token_id": getattr(tokenizer, "sep_token_id", None)}
    special = {k: v for k, v in special.items() if v is not None}
    if kind == "full":
        return BertConfig(**{**source.to_dict(), "max_position_embeddings": length})
    if kind == "lsg":
        return lsg.LSGBertConfig(**{**source.to_dict(), "max_position_embeddings": length},
                                 lsg_block_size=s["block_size"], lsg_sparse_factor=s["sparse_factor"],
                                 lsg_sparse_blocks=s["sparse_blocks"], lsg_num_global_tokens=1,
                                 lsg_global_question="question" in s["global_tokens"])
    if kind == "longformer":
        config = LongformerConfig(**shared, **special, attention_window=s["window"],
                                  max_position_embeddings=length + int(shared.get("pad_token_id") or 0) + 1)
        setattr(config, GLOBAL_ATTRIBUTE, list(s["global_tokens"]))
        return config
    if kind == "bigbird":
        return BigBirdConfig(**shared, **special, attention_type="block_sparse", block_size=s["block_size"],
                             num_random_blocks=s["num_random_blocks"], max_position_embeddings=length,
                             use_bias=True, rescale_embeddings=False)
    return NystromformerConfig(**shared, **special, num_landmarks=s["num_landmarks"], segment_means_seq_len=length,
                               max_position_embeddings=length, inv_coeff_init_option=False)


def _renames(kind: str, head: str) -> list[tuple[str, str]]:
    """(BERT prefix, target prefix) pairs; the first match renames a key."""
    base = {"full": "bert.", "lsg": "bert.", "bigbird": "bert.", "longformer": "longformer.",
            "nystromformer": "nystromformer."}[kind]
    rules = [("bert.embeddings.", base + "embeddings."), ("bert.encoder.", base + "encoder.")]
    if kind in ("full", "lsg"):
        return rules + [("bert.pooler.", "bert.pooler."), ("classifier.", "classifier."),
                        ("qa_outputs.", "qa_outputs."), ("cls.", "cls.")]
    if head == "sequence":
        rules += [("bert.pooler.dense.", "classifier.dense."), ("classifier.", "classifier.out_proj.")]
    elif head == "token":
        rules += [("classifier.", "classifier.")]
        if kind == "bigbird":
            rules += [("bert.pooler.dense.", "bert.pooler.")]
    elif head == "qa":
        rules += [("qa_outputs.", "qa_classifier.qa_outputs." if kind == "bigbird" else "qa_outputs.")]
    elif kind == "longformer":
        rules += [("cls.predictions.transform.dense.", "lm_head.dense."),
                  ("cls.predictions.transform.LayerNorm.", "lm_head.layer_norm."),
                  ("cls.predictions.bias", "lm_head.bias"), ("cls.predictions.decoder.bias", "lm_head.decoder.bias")]
    else:
        rules += [("cls.", "cls.")]
    return rules


def convert(model: nn.Module, settings: dict[str, Any], kind: str, tokenizer=None) -> nn.Module:
    """A new model of the target class with `model`'s weights (see the module docstring).
    settings: from `check_conversion`. The returned model is in train mode, runtime hooks attached."""
    head = _head_kind(model)
    config = _target_config(kind, model.config, settings, tokenizer)
    _, classes = TARGETS[kind]
    target = classes[head](config)
    rules = _renames(kind, head)
    mapped = {}
    for key, value in model.state_dict().items():
        if key.endswith("position_ids") or key.endswith("token_type_ids"):
            continue  # buffers rebuilt by the target
        rule = next(((old, new) for old, new in rules if key.startswith(old)), None)
        if rule is None:
            continue  # e.g. BERT's pooler in a head that has no use for it
        new_key = rule[1] + key[len(rule[0]):]
        mapped[new_key] = value
        if kind == "longformer" and ".attention.self." in new_key:  # global projections start as copies
            for name in ("query", "key", "value"):
                marker = f".attention.self.{name}."
                if marker in new_key:
                    mapped[new_key.replace(marker, f".attention.self.{name}_global.")] = value
    table_key = next(k for k in mapped if k.endswith("embeddings.position_embeddings.weight"))
    target_rows = target.state_dict()[table_key].shape[0]
    offset = {"longformer": int(config.pad_token_id or 0) + 1, "nystromformer": 2}.get(kind, 0)
    mapped[table_key] = extend_positions(mapped[table_key], settings["max_length"], offset, target_rows)
    if kind == "nystromformer":  # the depthwise convolution skip on the values: a new weight, starts at zero
        for key, value in target.state_dict().items():
            if key.endswith("attention.self.conv.weight"):
                mapped[key] = torch.zeros_like(value)
    if kind == "bigbird" and head == "qa":  # the head's feed-forward block: a copy of the last layer's
        last = f"bert.encoder.layer.{config.num_hidden_layers - 1}."
        for part in ("intermediate.dense", "output.dense", "output.LayerNorm"):
            for tensor in ("weight", "bias"):
                mapped[f"qa_classifier.{part}.{tensor}"] = mapped[f"{last}{part}.{tensor}"]
    missing, unexpected = target.load_state_dict(mapped, strict=False)
    if unexpected:
        raise RuntimeError(f"conversion to {kind}: weights with no place in {type(target).__name__}: {unexpected[:3]}")
    allowed_new = ("bert.pooler.", "decoder.weight", "lm_head.decoder.bias", "cls.predictions.decoder.bias")
    missing = [k for k in missing if not k.startswith(allowed_new) and not k.endswith(allowed_new)]
    if missing:
        raise RuntimeError(f"conversion to {kind}: {type(target).__name__} weights left uninitialised: {missing[:3]}")
    if hasattr(target, "tie_weights"):
        target.tie_weights()
    target.train(model.training)
    attach_runtime(target)
    return target


# ---- runtime behaviour the HF classes leave to the caller ----------------------------------------------
def global_attention_mask(tokens: list[str], input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
    """[B, L] 1 on the global tokens: `cls` = position 0; `question` = the first segment of a pair
    ([CLS] question [SEP], token_type_ids 0 on real tokens)."""
    mask = torch.zeros_like(input_ids)
    if "cls" in tokens:
        mask[:, 0] = 1
    if "question" in tokens and token_type_ids is not None:
        real = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        mask = mask | lsg.first_segment(real, token_type_ids).long()
    return mask


def _inputs(args, kwargs) -> dict:
    if args:
        kwargs = {"input_ids": args[0], **kwargs}
    return kwargs


def _longformer_globals(module, args, kwargs):
    kwargs = _inputs(args, kwargs)
    tokens = getattr(module.config, GLOBAL_ATTRIBUTE, None)
    if tokens and kwargs.get("global_attention_mask") is None and kwargs.get("input_ids") is not None:
        kwargs["global_attention_mask"] = global_attention_mask(
            tokens, kwargs["input_ids"], kwargs.get("attention_mask"), kwargs.get("token_type_ids"))
    return (), kwargs


def _bigbird_reset(module, args, kwargs):
    # HF switches a BigBird to full attention for good after one short input; undo that before every call.
    base = getattr(module, module.base_model_prefix, module)
    base.set_attention_type(module.config.attention_type)
    kwargs = _inputs(args, kwargs)
    ids = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
    module._lmdistill_length = ids.shape[1]
    return (), kwargs


def _nystromformer_pad(module, args, kwargs):
    # HF's Nystromformer in landmark mode needs inputs of exactly segment_means_seq_len tokens, and in
    # transformers 5 it builds an L x L padding mask that cannot be added to the [B, H, landmarks, L]
    # landmark scores (a shape error). Pad, and pass the [B, 1, 1, L] additive mask it was written for
    # (a 4D mask is used as given).
    kwargs = _inputs(args, kwargs)
    ids = kwargs.get("input_ids")
    if ids is None:
        return (), kwargs
    length = module.config.segment_means_seq_len
    module._lmdistill_length = ids.shape[1]
    mask = kwargs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    if mask.dim() != 2:
        return (), kwargs
    kwargs["attention_mask"] = mask
    if module.config.num_landmarks != length and ids.shape[1] != length:
        if ids.shape[1] > length:
            raise ValueError(f"input of {ids.shape[1]} tokens is longer than this Nystromformer's "
                             f"segment_means_seq_len {length}")
        extra = length - ids.shape[1]
        pad_values = {"input_ids": module.config.pad_token_id or 0, "labels": -100}
        for name in ("input_ids", "attention_mask", "token_type_ids", "labels"):
            value = kwargs.get(name)
            if value is not None and value.dim() == 2:
                kwargs[name] = nn.functional.pad(value, (0, extra), value=pad_values.get(name, 0))
    dtype = module.dtype
    kwargs["attention_mask"] = (1.0 - kwargs["attention_mask"][:, None, None, :].to(dtype)) * torch.finfo(dtype).min
    return (), kwargs


def _cut_outputs(module, args, kwargs, output):
    """Cut sequence outputs back to the caller's input length (padding added by HF or by us)."""
    length = getattr(module, "_lmdistill_length", None)
    if length is None or not hasattr(output, "keys"):
        return output
    for name in ("logits", "start_logits", "end_logits", "last_hidden_state"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor) and (value.dim() == 3 or name.endswith("start_logits")
                                                or name.endswith("end_logits")) and value.shape[1] > length:
            output[name] = value[:, :length]
    if getattr(output, "hidden_states", None) is not None:
        output["hidden_states"] = tuple(h[:, :length] for h in output.hidden_states)
    return output


def attach_runtime(model: nn.Module) -> nn.Module:
    """Attach the in-memory behaviour of an efficient model (see the module docstring). Idempotent;
    a no-op for other models. Hooks use only their `module` argument, so deep copies stay correct."""
    if getattr(model, "_lmdistill_runtime", False):
        return model
    model_type = getattr(model.config, "model_type", "")
    if model_type == "longformer":
        model.register_forward_pre_hook(_longformer_globals, with_kwargs=True)
    elif model_type == "big_bird":
        model.register_forward_pre_hook(_bigbird_reset, with_kwargs=True)
        model.register_forward_hook(_cut_outputs, with_kwargs=True)
    elif model_type == "nystromformer":
        model.register_forward_pre_hook(_nystromformer_pad, with_kwargs=True)
        model.register_forward_hook(_cut_outputs, with_kwargs=True)
    else:
        return model
    model._lmdistill_runtime = True
    return model


def full_twin(student: nn.Module, teacher: nn.Module) -> nn.Module:
    """A full-attention BERT of the student's size and positions (random weights: for cost only)."""
    config = student.config
    bert = BertConfig(**{**teacher.config.to_dict(), **{k: getattr(config, k) for k in (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "id2label", "label2id")},
        "max_position_embeddings": positions(config)})
    return type(teacher)(bert).eval()


def required_length(config) -> int | None:
    """The exact input length a model needs (Nystromformer in landmark mode), else None."""
    if getattr(config, "model_type", "") == "nystromformer" and config.num_landmarks != config.segment_means_seq_len:
        return int(config.segment_means_seq_len)
    return None


def describe(kind: str, s: dict[str, Any]) -> str:
    """One line for logs and reports, e.g. `longformer attention (window 256, global cls, 4096 positions)`."""
    parts = [f"{k.replace('_', ' ')} {','.join(v) if isinstance(v, list) else v}" for k, v in s.items()
             if k not in ("max_length", "type")]
    return f"{kind} attention ({', '.join(parts + [str(s['max_length']) + ' positions'])})"
