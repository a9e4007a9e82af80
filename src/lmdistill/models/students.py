"""Build a student: a subset of teacher layers (DistilBERT-style), a new size from config overrides
(random initialisation), or any HF model path."""

from __future__ import annotations

import copy
import logging

from torch import nn

from lmdistill.config import StudentConfig
from lmdistill.errors import ConfigError

logger = logging.getLogger("lmdistill")


def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer blocks (`encoder.layer`, `model.layers`, `transformer.h`, ...)."""
    count = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count and name.split(".")[-1] in (
            "layer", "layers", "h", "blocks", "block"
        ):
            return name, module
    raise ConfigError(f"student: cannot find the transformer layers of {type(model).__name__}")


def uniform_layers(num_layers: int, teacher_layers: int) -> list[int]:
    """Pick `num_layers` of `teacher_layers` evenly, starting at layer 0 (6 -> 3 gives 0, 2, 4)."""
    if not 1 <= num_layers <= teacher_layers:
        raise ConfigError(f"student.num_layers: {num_layers} is out of range; the teacher has {teacher_layers} layers")
    return [int(i * teacher_layers / num_layers) for i in range(num_layers)]


def layer_subset(model: nn.Module, keep: list[int]) -> nn.Module:
    """A copy of `model` with only the transformer layers `keep` (0-based), weights copied."""
    total = model.config.num_hidden_layers
    for index in keep:
        if not 0 <= index < total:
            raise ConfigError(
                f"student.layers: layer {index} is out of range; the teacher has {total} layers (0-{total - 1})"
            )
    if len(set(keep)) != len(keep):
        raise ConfigError(f"student.layers: {keep} repeats a layer")
    student = copy.deepcopy(model)
    name, layers = find_layer_list(student)
    parent = student.get_submodule(name.rsplit(".", 1)[0]) if "." in name else student
    new_layers = nn.ModuleList([layers[i] for i in keep])
    setattr(parent, name.rsplit(".", 1)[-1], new_layers)
    # Causal LMs index their KV cache by layer; renumber the kept layers.
    for new_index, layer in enumerate(new_layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = student.config
    config.num_hidden_layers = len(keep)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep]
    student.requires_grad_(True)
    student.train()
    return student


def build_student(cfg: StudentConfig, finetuned_teacher, load_pretrained, auto_class, model_kwargs: dict,
                  trust_remote_code: bool = False, tokenizer=None):
    """Return (student model, description).

    finetuned_teacher: the teacher as the recipe uses it (task head trained).
    load_pretrained:   a zero-argument function loading the teacher's pretrained weights, used when
                       `init_from: pretrained`.
    tokenizer:         the student's tokenizer (its [CLS]/[SEP] ids go into an efficient student's config).
    With `cfg.attention`, the student built from the other keys is converted (models/efficient.py).
    """
    student, description = _build_full(cfg, finetuned_teacher, load_pretrained, auto_class, model_kwargs,
                                       trust_remote_code)
    if cfg.attention is None:
        return student, description
    from lmdistill.models import efficient

    settings = efficient.check_conversion(cfg.attention, student)
    student = efficient.convert(student, settings, cfg.attention.type, tokenizer)
    return student, f"{description}, {efficient.describe(cfg.attention.type, settings)}"


def _build_full(cfg: StudentConfig, finetuned_teacher, load_pretrained, auto_class, model_kwargs: dict,
                trust_remote_code: bool = False):
    if cfg.path is not None:
        from lmdistill.models.teacher import load_model

        student, missing = load_model(auto_class, cfg.path, model_kwargs, key="student.path",
                                      trust_remote_code=trust_remote_code)
        return student, f"{cfg.path}" + (f" ({len(missing)} new weights)" if missing else "")
    if cfg.config is not None:
        base = finetuned_teacher.config.to_dict()
        unknown = [k for k in cfg.config if k not in base]
        if unknown:
            raise ConfigError(f"student.config.{unknown[0]}: not a key of the teacher's {type(finetuned_teacher.config).__name__}")
        base.update(cfg.config)
        config = type(finetuned_teacher.config).from_dict(base)
        if hasattr(config, "layer_types") and isinstance(config.layer_types, list):
            if len(config.layer_types) != config.num_hidden_layers:
                config.layer_types = config.layer_types[: config.num_hidden_layers]
        try:
            student = auto_class.from_config(config, attn_implementation=finetuned_teacher.config._attn_implementation)
        except (ValueError, RuntimeError) as err:
            raise ConfigError(f"student.config: {str(err).splitlines()[0]}") from None
        return student, "new model from config overrides " + ", ".join(f"{k}={v}" for k, v in cfg.config.items())
    source = finetuned_teacher if cfg.init_from == "finetuned" else load_pretrained()
    total = source.config.num_hidden_layers
    keep = cfg.layers if cfg.layers is not None else uniform_layers(cfg.num_layers, total)
    student = layer_subset(source, keep)
    return student, f"teacher layers {keep} of {total} ({cfg.init_from} weights)"
