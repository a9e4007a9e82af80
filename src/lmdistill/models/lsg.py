"""LSG attention (local + sparse + global) for BERT-family encoders: our own implementation.

After Condevaux & Harispe (2022), "LSG Attention: Extrapolation of pretrained Transformers to long
sequences", simplified. The sequence is cut into blocks of `lsg_block_size` tokens. A token attends to

- local:  every token of its own block and of the two neighbouring blocks (up to 3 blocks);
- sparse: `lsg_sparse_blocks` further blocks on each side, compressed by averaging the keys and values
          of every `lsg_sparse_factor` consecutive tokens (masked average; 0 turns sparse off);
- global: the first `lsg_num_global_tokens` tokens of the sequence ([CLS]) and, with
          `lsg_global_question` (question answering), the whole first segment of each row
          ([CLS] question [SEP]: the real tokens of token type 0, so the count differs per row);
          these tokens also attend to every token. Without it, a context token far from the start
          learns about the question only through [CLS]'s single vector.

A global token is removed from the local keys, so no key is counted twice. When one block covers
the whole input this is exactly full attention (tested). Each block's queries meet its gathered keys in
torch's fused scaled_dot_product_attention, so no score matrix is kept: memory per layer is the gathered
keys and values, B x heads x L x (global + 3 block + 2 sparse_blocks block / sparse_factor) x head size
each, linear in L.

The model reuses BERT's weights unchanged (same parameter names, no new weights), so converting a
BERT is a matter of config plus longer position embeddings. This file imports only torch and
transformers: `import lmdistill.models.lsg` registers the classes with the Auto* factories, after
which `AutoModelFor<Task>.from_pretrained(folder)` loads a saved LSG model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from transformers.models.bert.modeling_bert import BertSelfAttention


class LSGBertConfig(BertConfig):
    """BertConfig plus the LSG attention settings (see the module docstring)."""

    model_type = "lsg_bert"

    def __init__(self, lsg_block_size: int = 128, lsg_sparse_factor: int = 4, lsg_sparse_blocks: int = 1,
                 lsg_num_global_tokens: int = 1, lsg_global_question: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.lsg_global_question = lsg_global_question
        self.lsg_block_size = lsg_block_size
        self.lsg_sparse_factor = lsg_sparse_factor
        self.lsg_sparse_blocks = lsg_sparse_blocks
        self.lsg_num_global_tokens = lsg_num_global_tokens


def _neighbour_blocks(x: torch.Tensor, offsets: list[int], dim: int, fill=0.0) -> torch.Tensor:
    """x with blocks along `dim` ([..., n, b, ...]) -> [..., n, len(offsets) * b, ...]: for block i, the
    blocks i + o for each offset o, concatenated; out-of-range blocks are `fill`."""
    num, pad = x.shape[dim], max(abs(o) for o in offsets)
    filler_shape = list(x.shape)
    filler_shape[dim] = pad
    filler = x.new_full(filler_shape, fill)
    padded = torch.cat([filler, x, filler], dim=dim)
    return torch.cat([padded.narrow(dim, pad + o, num) for o in offsets], dim=dim + 1)


def lsg_attention(query, key, value, mask, block_size: int, sparse_factor: int, sparse_blocks: int,
                  num_global: int, dropout: float = 0.0, training: bool = False) -> torch.Tensor:
    """Local + sparse + global attention.

    query, key, value: [B, H, L, d]; mask: [B, L] (0 = padding, 1 = real token, 2 = a real token that is
    global besides the first `num_global`) or None. Returns [B, H, L, d]. Memory is linear in L (see the
    module docstring).
    """
    B, H, L, d = query.shape
    if mask is None:
        mask = torch.ones(B, L, dtype=torch.long, device=query.device)
    is_global = mask > 1
    is_global[:, :num_global] = True
    mask = mask > 0
    is_global &= mask
    # Global positions form a prefix of every row ([CLS], or [CLS] question [SEP]); rows with a shorter one
    # take their non-global positions in [0, g) from the local part below.
    g = int(is_global.any(0).nonzero().max()) + 1 if bool(is_global.any()) else 0
    b = block_size
    nb = math.ceil(L / b)
    pad = nb * b - L
    if pad:
        query, key, value = (F.pad(t, (0, 0, 0, pad)) for t in (query, key, value))
        mask = F.pad(mask, (0, pad), value=False)
        is_global = F.pad(is_global, (0, pad), value=False)
    scale = d ** -0.5
    neg = torch.finfo(query.dtype).min

    q_blocks = (query * scale).view(B, H, nb, b, d)
    k_blocks, v_blocks = key.view(B, H, nb, b, d), value.view(B, H, nb, b, d)
    local_ok = mask & ~is_global  # global keys are attended through the global part only
    local_ok = local_ok.view(B, nb, b)

    keys = [_neighbour_blocks(k_blocks, [-1, 0, 1], 2)]  # [B, H, nb, 3b, d]
    values = [_neighbour_blocks(v_blocks, [-1, 0, 1], 2)]
    oks = [_neighbour_blocks(local_ok, [-1, 0, 1], 1, fill=False)]  # [B, nb, 3b]

    if sparse_factor and sparse_blocks:
        s = sparse_factor
        weight = mask.to(key.dtype).view(B, 1, nb * b // s, s, 1)
        count = weight.sum(-2)  # [B, 1, L/s, 1]
        pooled_k = (key.view(B, H, nb * b // s, s, d) * weight).sum(-2) / count.clamp(min=1)
        pooled_v = (value.view(B, H, nb * b // s, s, d) * weight).sum(-2) / count.clamp(min=1)
        pooled_ok = (count[:, 0, :, 0] > 0).view(B, nb, b // s)
        offsets = [-1 - sparse_blocks + j for j in range(sparse_blocks)] + [2 + j for j in range(sparse_blocks)]
        keys.append(_neighbour_blocks(pooled_k.view(B, H, nb, b // s, d), offsets, 2))
        values.append(_neighbour_blocks(pooled_v.view(B, H, nb, b // s, d), offsets, 2))
        oks.append(_neighbour_blocks(pooled_ok, offsets, 1, fill=False))

    if g:
        global_k, global_v = key[:, :, :g], value[:, :, :g]  # [B, H, g, d]
        keys.insert(0, global_k[:, :, None].expand(B, H, nb, g, d))
        values.insert(0, global_v[:, :, None].expand(B, H, nb, g, d))
        oks.insert(0, is_global[:, None, :g].expand(B, nb, g))

    all_k, all_v, all_ok = torch.cat(keys, dim=3), torch.cat(values, dim=3), torch.cat(oks, dim=2)
    # Each (batch, head, block) is one small attention problem: its b queries against its K gathered keys.
    # torch's fused SDPA kernel solves them without ever holding the [b, K] score matrices of all blocks
    # at once (the einsum + softmax form held two of them: most of LSG's memory). The mask is additive
    # (finfo.min, not -inf), so a block with no real key gets a uniform average and never NaN.
    K = all_k.shape[3]
    bias = torch.zeros(B, nb, K, dtype=query.dtype, device=query.device).masked_fill_(~all_ok, neg)
    out = F.scaled_dot_product_attention(
        q_blocks.reshape(B, H * nb, b, d), all_k.reshape(B, H * nb, K, d), all_v.reshape(B, H * nb, K, d),
        attn_mask=bias[:, None].expand(B, H, nb, K).reshape(B, H * nb, 1, K),
        dropout_p=dropout if training else 0.0, scale=1.0,  # q_blocks is already scaled
    ).reshape(B, H, nb * b, d)

    if g:  # global queries see every token
        scores = torch.einsum("bhqd,bhkd->bhqk", query[:, :, :g] * scale, key)
        scores.masked_fill_(~mask[:, None, None, :], neg)
        probs = F.dropout(scores.softmax(-1), p=dropout, training=training)
        seen_all = torch.einsum("bhqk,bhkd->bhqd", probs, value)
        out = torch.cat([torch.where(is_global[:, None, :g, None], seen_all, out[:, :, :g]), out[:, :, g:]], dim=2)
    return out[:, :, :L]


def first_segment(attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: the real tokens of a pair's first segment ([CLS] question [SEP], token type 0)."""
    return attention_mask.bool() & (token_type_ids == 0)


class LSGSelfAttention(BertSelfAttention):
    """BertSelfAttention (same weights) computing LSG attention; `attention_mask` is the 2D [B, L] mask."""

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
        shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
        query = self.query(hidden_states).view(shape).transpose(1, 2)
        key = self.key(hidden_states).view(shape).transpose(1, 2)
        value = self.value(hidden_states).view(shape).transpose(1, 2)
        c = self.config
        out = lsg_attention(query, key, value, attention_mask, c.lsg_block_size, c.lsg_sparse_factor,
                            c.lsg_sparse_blocks, c.lsg_num_global_tokens, self.dropout.p, self.training)
        return out.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1).contiguous(), None


class LSGBertModel(BertModel):
    config_class = LSGBertConfig

    def __init__(self, config: LSGBertConfig, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        for index, layer in enumerate(self.encoder.layer):
            old = layer.attention.self
            new = LSGSelfAttention(config, layer_idx=index)
            new.load_state_dict(old.state_dict())
            layer.attention.self = new

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, *args, **kwargs):
        if self.config.lsg_global_question and token_type_ids is not None:
            # The mask carries the question to the attention layers: 2 on the first segment's real tokens.
            if attention_mask is None:
                reference = input_ids if input_ids is not None else kwargs["inputs_embeds"][..., 0]
                attention_mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)
            attention_mask = attention_mask.long().clamp(max=1) + first_segment(attention_mask, token_type_ids).long()
        return super().forward(input_ids, attention_mask, token_type_ids, *args, **kwargs)

    def _create_attention_masks(self, attention_mask, encoder_attention_mask, *args, **kwargs):
        # LSG reads the plain [B, L] mask: no L x L mask is ever built. The other arguments (embeddings,
        # encoder states, the cache, and position ids since transformers 5.25) are not needed here, and
        # their names change between transformers releases, so they are taken as they come.
        return attention_mask, encoder_attention_mask


def _lsg_head(bert_class, add_pooling_layer: bool):
    """An LSG version of a BERT task model: the same heads, with `bert` an LSGBertModel."""

    class LSGHead(bert_class):
        config_class = LSGBertConfig

        def __init__(self, config):
            super().__init__(config)
            self.bert = LSGBertModel(config, add_pooling_layer=add_pooling_layer)
            self.post_init()

    LSGHead.__name__ = LSGHead.__qualname__ = "LSG" + bert_class.__name__
    return LSGHead


LSGBertForSequenceClassification = _lsg_head(BertForSequenceClassification, True)
LSGBertForTokenClassification = _lsg_head(BertForTokenClassification, False)
LSGBertForQuestionAnswering = _lsg_head(BertForQuestionAnswering, False)
LSGBertForMaskedLM = _lsg_head(BertForMaskedLM, False)

AUTO_CLASSES = {
    AutoModel: LSGBertModel,
    AutoModelForSequenceClassification: LSGBertForSequenceClassification,
    AutoModelForTokenClassification: LSGBertForTokenClassification,
    AutoModelForQuestionAnswering: LSGBertForQuestionAnswering,
    AutoModelForMaskedLM: LSGBertForMaskedLM,
}


def register() -> None:
    """Make `AutoConfig` / `AutoModelFor<Task>` know `lsg_bert` (idempotent)."""
    try:
        AutoConfig.register(LSGBertConfig.model_type, LSGBertConfig)
    except ValueError:  # already registered
        return
    for auto, cls in AUTO_CLASSES.items():
        auto.register(LSGBertConfig, cls)


register()
