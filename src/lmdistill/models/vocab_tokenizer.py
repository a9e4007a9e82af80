"""The tokenizer of a vocabulary-compressed student, as a plain `tokenizer.json` (no lmdistill needed).

What the format allows. The GLMD code feeds a dropped token to the student as its substitute. A tokenizer
file cannot express that exactly: in a BPE model the merge table is keyed by token *ids*
(tokenizers `BpeBuilder::build`), so giving a dropped token its substitute's id makes the merges that
continue from either token collide and changes how other words split; and in BPE and WordPiece the
id -> token table used for decoding is built from a hash map, so an id shared by two strings decodes to
either of them, at random. So the saved tokenizer does the lossless thing instead: it emits only kept
tokens and splits a dropped token into kept pieces (BPE: the merges that build dropped tokens are
removed; WordPiece: the dropped pieces leave the vocabulary, and the longest-match search finds shorter
ones). Text whose original tokenization uses only kept tokens is tokenized exactly as before, renumbered;
`decode` gives back the text exactly.

For this to work everywhere, the kept set must hold every single-character token (so every word can be
spelled) and, for BPE, both parts of every kept token's merge (so a kept token can still be built):
`structure()` returns those constraints for `vocab.select_kept`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lmdistill.errors import ConfigError
from lmdistill.models.vocab import (
    VocabMap,
    build_vocab_map,
    parameter_split,
    select_kept,
    shrink_model,
)

SUPPORTED = ("BPE", "WordPiece", "WordLevel", "Unigram")


def backend_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"vocab: {type(tokenizer).__name__} is not a fast (tokenizers) tokenizer; vocabulary "
                          "compression rewrites tokenizer.json")
    data = json.loads(backend.to_str())
    kind = data["model"]["type"]
    if kind not in SUPPORTED:
        raise ConfigError(f"vocab: cannot compress a {kind} tokenizer (supported: {', '.join(SUPPORTED)})")
    return data


def _merge_pairs(model: dict) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]


def _merge_result(model: dict, left: str, right: str) -> str:
    prefix = model.get("continuing_subword_prefix") or ""
    return left + (right[len(prefix):] if prefix and right.startswith(prefix) else right)


def structure(tokenizer) -> tuple[set[int], dict[int, tuple[int, int]]]:
    """(ids that must be kept, BPE merge parts): the added/special tokens, the unknown token, every
    single-character token (with the subword prefix / word suffix forms, and byte-fallback tokens), and
    for BPE, token id -> the ids of the two tokens its first merge joins."""
    data = backend_json(tokenizer)
    model = data["model"]
    forced = {int(t["id"]) for t in data.get("added_tokens", [])}
    forced.update(int(i) for i in tokenizer.all_special_ids)
    parts: dict[int, tuple[int, int]] = {}
    if model["type"] == "Unigram":
        vocab = {piece: i for i, (piece, _) in enumerate(model["vocab"])}
        if model.get("unk_id") is not None:
            forced.add(int(model["unk_id"]))
    else:
        vocab = model["vocab"]
    prefix = model.get("continuing_subword_prefix") or ""
    suffix = model.get("end_of_word_suffix") or ""
    unk = model.get("unk_token")
    if isinstance(unk, str) and unk in vocab:
        forced.add(vocab[unk])
    for token, index in vocab.items():
        core = token
        if prefix and core.startswith(prefix):
            core = core[len(prefix):]
        if suffix and core.endswith(suffix):
            core = core[: -len(suffix)]
        if len(core) == 1 or (model.get("byte_fallback") and token.startswith("<0x") and len(token) == 6):
            forced.add(int(index))
    if model["type"] == "BPE":
        for left, right in _merge_pairs(model):
            result = _merge_result(model, left, right)
            if result in vocab and left in vocab and right in vocab:
                parts.setdefault(vocab[result], (vocab[left], vocab[right]))
    return forced, parts


def _remap_post_processor(node, new_id: dict[int, int]):
    """Special-token ids inside a post-processor (TemplateProcessing, Bert/Roberta, Sequence)."""
    if isinstance(node, dict):
        kind = node.get("type")
        if kind == "TemplateProcessing":
            for spec in node.get("special_tokens", {}).values():
                spec["ids"] = [new_id[i] for i in spec["ids"]]
        elif kind in ("BertProcessing", "RobertaProcessing"):
            for key in ("sep", "cls"):
                if key in node:
                    node[key] = [node[key][0], new_id[node[key][1]]]
        elif kind == "Sequence":
            for child in node.get("processors", []):
                _remap_post_processor(child, new_id)
    return node


def compressed_tokenizer(tokenizer, vmap: VocabMap):
    """A `PreTrainedTokenizerFast` over the kept tokens only (new ids); see the module docstring."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = backend_json(tokenizer)
    model = data["model"]
    new_id = {int(old): new for new, old in enumerate(vmap.kept_ids.tolist())}
    if model["type"] == "Unigram":
        model["vocab"] = [model["vocab"][old] for old in vmap.kept_ids.tolist()]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[int(model["unk_id"])]
    else:
        model["vocab"] = {token: new_id[i] for token, i in model["vocab"].items() if i in new_id}
    if model["type"] == "BPE":
        vocab = model["vocab"]
        model["merges"] = [[left, right] for left, right in _merge_pairs(model)
                           if left in vocab and right in vocab and _merge_result(model, left, right) in vocab]
    for token in data.get("added_tokens", []):
        token["id"] = new_id[int(token["id"])]
    data["post_processor"] = _remap_post_processor(data.get("post_processor"), new_id)
    backend = Tokenizer.from_str(json.dumps(data))
    specials = {key: getattr(tokenizer, key) for key in ("bos_token", "eos_token", "unk_token", "sep_token",
                                                           "pad_token", "cls_token", "mask_token")
                if getattr(tokenizer, key, None) is not None}
    result = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=tokenizer.model_max_length,
                                     padding_side=tokenizer.padding_side, **specials)
    result.init_kwargs["vocab_compression"] = {"original_size": vmap.original_size, "kept_size": vmap.kept_size}
    return result


@dataclass
class Compression:
    vmap: VocabMap
    tokenizer: object  # the rewritten tokenizer: emits kept ids only
    before: dict  # parameter_split of the model before / after
    after: dict
    coverage: float  # share of the counted tokens that are kept tokens


def compress_model(model, tokenizer, counts, keep: int, forced: set[int], parts, embeddings, substitute: str,
                   record: dict) -> Compression:
    """Keep the `keep` most frequent tokens (plus `forced`; `parts` from `structure`), map the others to
    substitutes chosen on `embeddings`, shrink `model` in place and rewrite the tokenizer. `record` is
    stored as the model config's `vocab_compression` beside the sizes. Used by glmd and compress-vocab."""
    vmap = build_vocab_map(select_kept(counts, keep, forced, parts), embeddings, substitute, tokenizer.unk_token_id)
    before = parameter_split(model)
    shrink_model(model, vmap)
    after = parameter_split(model)
    model.config.vocab_compression = {"original_size": vmap.original_size, "kept_size": vmap.kept_size,
                                      "substitute": substitute, **record}
    coverage = counts[vmap.kept_mask].sum().item() / max(1, counts.sum().item())
    return Compression(vmap, compressed_tokenizer(tokenizer, vmap), before, after, coverage)
