"""Prompt classification: a language model classifies by predicting a word (PET-style cloze).

A pattern turns an input into a prompt (`"{text} Sentiment:"`); each class has one or more verbalizer
tokens (`{"0": " negative", "1": " positive"}`). The class score is the LM logit of the class's
verbalizer at the answer position, averaged over the class's verbalizers when it has several:

- causal LM: the answer position is the prompt's last token (it predicts the next one);
- masked LM: a mask token at the answer position, where the pattern says `{mask}` (default: appended
  after a space).

The model stays a plain `AutoModelForCausalLM` / `AutoModelForMaskedLM` (no new head), so the LM head is
the classifier. Training and evaluation both go through `model_forward`, which the pipeline installs as
the default forward of every stage (the trainer never learns about prompts): it returns the class
scores as `Features.logits` [B, C] and the cross-entropy on the gold class as `task_loss`.

Placeholders: `{text}` is the first text column (`{text2}` the second, for pairs); a column's own name
works too. Texts too long for `task.max_length` lose their last tokens; the pattern around them is kept.
Metric: accuracy (+ macro-F1 with more than two classes).
"""

from __future__ import annotations

import inspect
import logging

import datasets
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from lmdistill.errors import ConfigError, DataError
from lmdistill.io_utils import hash_json
from lmdistill.models.features import Features, batch_mask
from lmdistill.tasks.base import LabeledTask
from lmdistill.tasks.classification import class_metrics
from lmdistill.tasks.language_modeling import resolve_lm_type

MASK = "{mask}"
logger = logging.getLogger("lmdistill")


class PromptCollator:
    """Right-pads input_ids / attention_mask; stacks answer_position and labels."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row["input_ids"])] = torch.as_tensor(row["input_ids"])
            mask[i, : len(row["input_ids"])] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        for key in ("answer_position", "labels"):
            if key in rows[0]:
                batch[key] = torch.tensor([int(r[key]) for r in rows], dtype=torch.long)
        return batch


class PromptClassificationTask(LabeledTask):
    kind = "prompt-classification"
    primary_metric = "accuracy"
    default_max_length = 128

    # ---- config and data checks ---------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        columns = [cfg.text] if isinstance(cfg.text, str) else list(cfg.text or [])
        if not columns or len(columns) > 2:
            raise DataError("task.text: name the text column (or a list of two for sentence pairs)")
        if cfg.label is None:
            raise DataError("task.label: name the label column")
        if not cfg.pattern:
            raise ConfigError('task.pattern: required for prompt-classification, e.g. "{text} Sentiment:"')
        if not cfg.verbalizers:
            raise ConfigError('task.verbalizers: required, e.g. {"0": " negative", "1": " positive"}')
        self.text_columns = columns
        self.placeholders = [("{text}", "{" + columns[0] + "}")] + (
            [("{text2}", "{" + columns[1] + "}")] if len(columns) == 2 else [])
        for number, (generic, named) in enumerate(self.placeholders, start=1):
            if generic not in cfg.pattern and named not in cfg.pattern:
                raise ConfigError(f"task.pattern: {cfg.pattern!r} has no {generic} (or {named}) placeholder for "
                                  f"text column {number}")
        self.verbalizer_words = {}
        for label, words in cfg.verbalizers.items():
            words = [words] if isinstance(words, str) else list(words)
            if not words or not all(isinstance(w, str) and w for w in words):
                raise ConfigError(f"task.verbalizers.{label}: give a word, or a list of words")
            self.verbalizer_words[str(label)] = words
        for split, raw, source in (("train", self.raw_train, cfg.train), ("eval", self.raw_eval, cfg.eval)):
            for column in [*columns, cfg.label]:
                if column not in raw.column_names:
                    key = "task.label" if column == cfg.label else "task.text"
                    raise DataError(f"{source}: no column '{column}' (columns: {', '.join(raw.column_names)}); set {key}")
            unknown = sorted({str(v) for v in raw[cfg.label]} - set(self.verbalizer_words))
            if unknown:
                raise DataError(f"{source}: label '{unknown[0]}' in column '{cfg.label}' has no verbalizer "
                                f"(task.verbalizers has: {', '.join(self.verbalizer_words)})")
        if len(self.verbalizer_words) < 2:
            raise ConfigError("task.verbalizers: give at least two classes")
        # The classes are the verbalizer keys, in the order given.
        self.labels = list(self.verbalizer_words)
        self.label2id = {label: i for i, label in enumerate(self.labels)}
        self.verbalizer_ids: list[list[int]] | None = None
        self.mask_token_id: int | None = None
        self._scoring_ids: list[list[int]] | None = None

    @property
    def signature(self) -> str:
        """What a teacher fine-tuned on this task was fine-tuned for (stored in its config)."""
        return hash_json([self.cfg.pattern, self.verbalizer_words])[:16]

    @property
    def causal(self) -> bool:
        if self.cfg.lm_type != "auto":
            return self.cfg.lm_type == "causal"
        if self.model_config is None:
            raise ConfigError("task.lm_type: 'auto' needs the teacher's config (task.bind); set masked or causal")
        return resolve_lm_type(self.model_config) == "causal"

    def auto_class(self):
        return AutoModelForCausalLM if self.causal else AutoModelForMaskedLM

    def model_kwargs(self) -> dict:
        return {}  # no new head: the LM head scores the verbalizers

    def head_is_trained(self, model) -> bool:
        return getattr(model.config, "prompt_task", None) == self.signature

    def mark_finetuned(self, model) -> None:
        model.config.prompt_task = self.signature

    def bind_tokenizer(self, tokenizer) -> None:
        """Check the pattern and the verbalizers against the tokenizer: every verbalizer must be one token."""
        if not self.causal and tokenizer.mask_token is None:
            raise ConfigError("task.lm_type: a masked LM needs a tokenizer with a mask token")
        pattern = self.cfg.pattern
        if self.causal and MASK in pattern and not pattern.rstrip().endswith(MASK):
            raise ConfigError(f"task.pattern: a causal LM predicts the word after the prompt, so {MASK} may only "
                              f"end the pattern ({pattern!r})")
        self.verbalizer_ids = self.verbalizer_token_ids(tokenizer)
        self.mask_token_id = tokenizer.mask_token_id

    def verbalizer_token_ids(self, tokenizer) -> list[list[int]]:
        """[class][verbalizer] token ids; ConfigError naming a verbalizer that is not exactly one token."""
        ids = []
        for label, words in self.verbalizer_words.items():
            row = []
            for word in words:
                pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
                if len(pieces) != 1:
                    split = " + ".join(repr(p) for p in tokenizer.convert_ids_to_tokens(pieces)) or "nothing"
                    raise ConfigError(f"task.verbalizers.{label}: {word!r} is not one token of the tokenizer; "
                                      f"it splits into {split}")
                row.append(pieces[0])
            ids.append(row)
        return ids

    # ---- prompts ------------------------------------------------------------------------------
    def prompt(self, texts: list[str], tokenizer) -> str:
        pattern = self.cfg.pattern
        if self.causal:
            pattern = pattern.rstrip()
            pattern = pattern[: -len(MASK)] if pattern.endswith(MASK) else pattern
        elif MASK not in pattern:
            pattern = pattern + " " + MASK
        for (generic, named), text in zip(self.placeholders, texts):
            pattern = pattern.replace(generic, text).replace(named, text)
        return pattern.replace(MASK, tokenizer.mask_token or "") if not self.causal else pattern

    def encode(self, texts: list[str], tokenizer, max_length: int) -> tuple[list[int], int, bool]:
        """(input ids, answer position, truncated?) of one example; long texts are cut, the pattern kept."""
        ids = self._encode(self.prompt(texts, tokenizer), tokenizer)
        truncated = False
        while len(ids) > max_length:
            truncated = True
            longest = max(range(len(texts)), key=lambda i: len(texts[i]))
            pieces = tokenizer(texts[longest], add_special_tokens=False)["input_ids"]
            cut = max(0, len(pieces) - (len(ids) - max_length) - 1)
            if cut == 0 and not texts[longest]:
                raise DataError(f"task.max_length: {max_length} tokens cannot hold the pattern {self.cfg.pattern!r}")
            texts = list(texts)
            texts[longest] = tokenizer.decode(pieces[:cut]) if cut else ""
            ids = self._encode(self.prompt(texts, tokenizer), tokenizer)
        if self.causal:
            return ids, len(ids) - 1, truncated
        return ids, ids.index(tokenizer.mask_token_id), truncated

    def _encode(self, prompt: str, tokenizer) -> list[int]:
        ids = tokenizer(prompt)["input_ids"]
        # A causal prompt ends where the answer goes: drop an end-of-text token a template may add.
        if self.causal and len(ids) > 1 and ids[-1] == tokenizer.eos_token_id:
            ids = ids[:-1]
        return ids

    def tokenize(self, split, raw, tokenizer, max_length):
        rows = {"input_ids": [], "answer_position": [], "labels": []}
        truncated = 0
        for example in zip(*[list(raw[c]) for c in self.text_columns], list(raw[self.cfg.label])):
            ids, position, cut = self.encode([str(t) for t in example[:-1]], tokenizer, max_length)
            rows["input_ids"].append(ids)
            rows["answer_position"].append(position)
            rows["labels"].append(self.label2id[str(example[-1])])
            truncated += cut
        if truncated:
            logger.warning("%s: %d of %d prompts are longer than %d tokens; their text was cut, the pattern kept",
                           split, truncated, len(rows["labels"]), max_length)
        rows["attention_mask"] = [[1] * len(ids) for ids in rows["input_ids"]]
        return datasets.Dataset.from_dict(rows)

    def collator(self, tokenizer):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return PromptCollator(int(pad or 0))

    # ---- the forward pass -----------------------------------------------------------------------
    @staticmethod
    def lm_inputs(batch: dict) -> dict:
        """The model inputs of a prompt batch (no answer position, no labels)."""
        return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def answer_positions(self, batch: dict) -> torch.Tensor:
        """[B] the answer position of each row: the batch's `answer_position`, or, for a batch of model
        inputs only (the teacher-output cache's pass), derived from them: a causal prompt's last real
        token (batches are right-padded), a masked prompt's mask token (in the teacher's ids)."""
        if "answer_position" in batch:
            return batch["answer_position"]
        if self.causal:
            return batch_mask(batch).sum(-1) - 1
        is_mask = (batch["input_ids"] == self.mask_token_id).long()
        last = is_mask.shape[1] - 1 - is_mask.flip(-1).argmax(-1)  # the pattern's mask comes after the text
        return last

    def answer_logits(self, net, batch: dict, needs=None):
        """(LM logits at the answer position [B, V], the model output). Causal models that support it
        compute the LM head at that position only (`logits_to_keep`)."""
        want_hidden = bool(needs is not None and needs.wants_hidden)
        attentions = bool(needs is not None and needs.attentions)
        inputs = self.lm_inputs(batch)
        position = self.answer_positions(batch)
        if "logits_to_keep" in inspect.signature(net.forward).parameters:
            output = net(**inputs, logits_to_keep=position[:, None], output_hidden_states=want_hidden,
                         output_attentions=attentions)
            return output.logits[:, 0], output
        output = net(**inputs, output_hidden_states=want_hidden, output_attentions=attentions)
        rows = torch.arange(position.shape[0], device=position.device)
        return output.logits[rows, position], output

    @staticmethod
    def class_scores(answer_logits: torch.Tensor, verbalizer_ids: list[list[int]]) -> torch.Tensor:
        """[B, C]: each class's verbalizer logits at the answer position, averaged over its verbalizers.
        answer_logits: [B, V]."""
        return torch.stack([answer_logits[:, ids].mean(-1) for ids in verbalizer_ids], dim=-1)

    def model_forward(self, net, batch: dict, needs=None) -> Features:
        """The default forward of every stage on this task: class scores as logits, CE as task_loss."""
        if self.verbalizer_ids is None:
            raise ConfigError("task: bind_tokenizer() was not called before training")
        logits, output = self.answer_logits(net, batch, needs)
        scores = self.class_scores(logits, self._scoring_ids or self.verbalizer_ids)
        labels = batch.get("labels")
        return Features(
            logits=scores,
            hidden_states=tuple(output.hidden_states or ()),
            attentions=tuple(output.attentions) if getattr(output, "attentions", None) else None,
            mask=batch_mask(batch),
            task_loss=F.cross_entropy(scores.float(), labels) if labels is not None else None,
        )

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self, model, tokenizer, batch_size: int = 64, desc: str = "eval") -> dict[str, float]:
        # The model may have its own tokenizer (a vocabulary-compressed student): score its ids.
        self._scoring_ids = self.verbalizer_token_ids(tokenizer)
        try:
            return super().evaluate(model, tokenizer, batch_size, desc)
        finally:
            self._scoring_ids = None

    def eval_step(self, model, batch):
        logits, _ = self.answer_logits(model, batch)
        return self.class_scores(logits, self._scoring_ids or self.verbalizer_ids).float().cpu().numpy()

    def compute_metrics(self, outputs, dataset, split_raw) -> dict:
        return class_metrics(outputs, dataset, len(self.labels))

    def logit_pairs(self, student_logits, teacher_logits, batch):
        return [(student_logits, teacher_logits)]
