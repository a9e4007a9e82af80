"""Typed experiment config: one YAML file is one experiment.

`load_config(path, overrides)` reads YAML, applies `--set a.b=value` overrides and validates the
result once. Every error names the full key path, for example `recipe.temprature: unknown key`.
Each recipe declares its own settings class (see `lmdistill.recipes`); `recipe:` is validated
against the class of the recipe it names.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from lmdistill.errors import ConfigError

TaskKind = Literal["classification", "token-classification", "question-answering", "language-modeling"]


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TeacherConfig(Strict):
    """Where the teacher comes from, and whether it is fine-tuned on the task first."""

    path: str = "minilm"  # `minilm` (packaged MiniLM-L6), `smollm2` (packaged SmolLM2-135M), a folder or a hub name
    gguf_file: str | None = None  # load a GGUF checkpoint from `path` (converted once, then cached)
    finetune: Literal["auto", "always", "never"] = "auto"  # auto: fine-tune when the task head is untrained
    epochs: float = 2.0
    learning_rate: float = 5.0e-5
    batch_size: int | None = None  # default: training.batch_size
    seed: int = 42  # teacher fine-tuning seed: one teacher per task, shared by every student seed


ATTENTION_TYPES = ("full", "longformer", "bigbird", "nystromformer", "lsg")
# The settings each attention type reads; any other key given for that type is an error.
ATTENTION_SETTINGS = {
    "full": ("max_length",),
    "longformer": ("max_length", "window", "global"),
    "bigbird": ("max_length", "block_size", "num_random_blocks"),
    "nystromformer": ("max_length", "num_landmarks"),
    "lsg": ("max_length", "block_size", "sparse_factor", "sparse_blocks", "global"),
}


class AttentionConfig(Strict):
    """The student's attention (models/efficient.py). The block/window rules of each type are
    checked here, before anything is built; rules that need the teacher are checked when the
    student is built (still before anything is written)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True,
                              serialize_by_alias=True)

    type: str = "full"  # full | longformer | bigbird | nystromformer | lsg
    max_length: int | None = Field(None, gt=0)  # positions of the student; default: the teacher's
    window: int | None = Field(None, gt=0)  # longformer: attention_window (even; window/2 tokens each side)
    block_size: int | None = Field(None, gt=0)  # bigbird: block_size; lsg: local block
    num_random_blocks: int | None = Field(None, ge=0)  # bigbird
    num_landmarks: int | None = Field(None, gt=0)  # nystromformer
    sparse_factor: int | None = Field(None, ge=0)  # lsg: keys/values averaged over this many tokens (0: no sparse)
    sparse_blocks: int | None = Field(None, ge=0)  # lsg: compressed blocks on each side beyond the local ones
    global_tokens: list[Literal["cls", "question"]] | None = Field(None, alias="global")  # longformer, lsg

    @model_validator(mode="after")
    def _type_rules(self):
        if self.type not in ATTENTION_TYPES:
            raise ValueError(f"unknown attention type '{self.type}' (choose from: {', '.join(ATTENTION_TYPES)})")
        allowed = ATTENTION_SETTINGS[self.type]
        for name, field in type(self).model_fields.items():
            key = field.alias or name
            if key not in allowed and key != "type" and getattr(self, name) is not None:
                raise ValueError(f"'{key}' is not a setting of attention type {self.type} "
                                 f"(its settings: {', '.join(allowed)})")
        from lmdistill.models.efficient import check_block_rules  # the rules live beside the conversion

        check_block_rules(self)
        return self


class GeneralDistillationConfig(Strict):
    """Task-agnostic distillation on raw text before the recipe's stages (lmdistill/general.py)."""

    corpus: str | list[str]  # plain-text files or globs (e.g. books)
    max_tokens: int = Field(2_000_000, gt=0)  # corpus tokens read in all
    long_length: int | None = Field(None, gt=0)  # long passages; default: the student's positions
    short_length: int = Field(512, gt=2)  # short passages
    short_fraction: float = Field(0.5, ge=0, le=1)  # share of the tokens in short passages
    layer_map: Literal["uniform", "last"] | list[list[int]] = "uniform"  # student -> teacher hidden states
    epochs: float = Field(1.0, gt=0)
    learning_rate: float | None = Field(None, gt=0)  # None: training.learning_rate
    batch_size: int = Field(4, gt=0)  # passages per step (long passages are long)


class StudentConfig(Strict):
    """How the student is built. Exactly one of layers / num_layers / config / path; `attention`
    turns it into an efficient-attention model (models/efficient.py)."""

    layers: list[int] | None = None  # keep these teacher layers (0-based), DistilBERT-style
    num_layers: int | None = None  # keep this many teacher layers, picked uniformly
    config: dict[str, Any] | None = None  # overrides on the teacher's config; random initialisation
    path: str | None = None  # any HF folder or hub name
    init_from: Literal["finetuned", "pretrained"] = "finetuned"  # which teacher weights a layer subset copies
    attention: AttentionConfig | None = None  # efficient attention: type, max_length, window / block sizes
    general: GeneralDistillationConfig | None = None  # a task-agnostic corpus stage before the recipe's stages

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("layers", "num_layers", "config", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of layers, num_layers, config, path (got {given or 'none'})")
        return self


class TaskConfig(Strict):
    """The task and its data files (local paths, or `hub:NAME@SPLIT` for a hub dataset)."""

    kind: TaskKind
    train: str
    eval: str
    text: str | list[str] | None = None  # one column, or two for sentence pairs (NER: tokens column)
    label: str | None = None
    format: Literal["auto", "tsv", "csv", "jsonl", "json", "conll", "squad", "text", "brat"] = "auto"  # brat: a folder
    max_length: int | None = None  # default per task kind
    doc_stride: int = 128  # overlap between windows of a long context (QA) or document (token classification)
    max_answer_tokens: int = Field(30, gt=0)  # question answering: longest answer span considered, in tokens
    lm_type: Literal["auto", "masked", "causal"] = "auto"  # language modelling: auto follows the teacher
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    block_size: int | None = None  # language modelling: tokens per training block (default max_length)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    hub_subset: str | None = None  # hub datasets only: the configuration name (e.g. `sst2` of `glue`)


class TrainingConfig(Strict):
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 32
    eval_batch_size: int = 64
    learning_rate: float = 5.0e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    group_by_length: bool = True  # batches of similar length: less padding, faster on CPU
    seed: int = 42
    logging_steps: int = 20
    save_steps: int = 500
    save_total_limit: int = 2
    num_threads: int | None = None  # torch threads for training; None leaves torch's default
    bf16: bool = False  # bf16 autocast (mixed precision) for the trained network
    torch_compile: bool = False  # torch.compile the trained network for the stage (in place)
    dataloader_num_workers: int = 0
    # Teacher-output cache: the teacher's outputs that a stage reads (its declared Needs) are computed
    # once per (teacher, data) by a pass before the stage and read from disk in every later epoch,
    # seed, run and recipe. See lmdistill.cache.
    cache_teacher: bool = True
    cache_top_k: int = Field(64, ge=1)  # LM vocabularies: keep the k largest logits + the tail's log-sum-exp
    cache_dtype: Literal["float16", "bfloat16", "float32"] = "float16"


class BenchConfig(Strict):
    """How teacher and student are measured. Both get exactly the same settings."""

    enabled: bool = True
    batch_sizes: list[int] = [1, 32]
    seq_len: int | None = None  # default: the task's typical (median) eval length
    repeats: int = 15  # forward passes per round (a third of it at batch >= 8)
    rounds: int = 3  # teacher and student alternate; the figure is the median over rounds
    warmup: int = 3
    num_threads: int | None = None  # default: torch's current thread count
    memory: bool = True  # peak memory, measured in a fresh process per model
    # Efficient-attention students: latency and peak memory against these lengths (cost_vs_length.*);
    # None: 512, 1024, ... up to the student's max_length; []: not measured.
    lengths: list[int] | None = None


class RecipeConfig(Strict):
    """Settings shared by every recipe. Each recipe subclasses this with its own keys."""

    name: str


class ExperimentConfig(Strict):
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig
    task: TaskConfig
    recipe: RecipeConfig
    training: TrainingConfig = TrainingConfig()
    bench: BenchConfig = BenchConfig()
    output: str
    cache_dir: str | None = None  # teacher cache; default $LMDISTILL_CACHE or ~/.cache/lmdistill
    _base_dir: Path | None = PrivateAttr(None)  # the config file's folder: relative data paths are also found there

    @property
    def search_dirs(self) -> list[Path]:
        return [self._base_dir, self._base_dir.parent] if self._base_dir else []

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("teacher"), str):
            data = {**data, "teacher": {"path": data["teacher"]}}
        return data


def _path_str(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if not (isinstance(part, str) and part.startswith("function-")))


def _raise_first(err: ValidationError, prefix: str = "") -> None:
    first = err.errors()[0]
    path = _path_str(tuple(first["loc"]))
    path = f"{prefix}.{path}" if prefix and path else (prefix or path)
    kind = first["type"]
    if kind == "extra_forbidden":
        raise ConfigError(f"{path}: unknown key") from None
    if kind == "missing":
        raise ConfigError(f"{path}: required key is missing") from None
    message = first["msg"].removeprefix("Value error, ")
    raise ConfigError(f"{path}: {message}" if path else message) from None


def parse_config(data: dict[str, Any]) -> ExperimentConfig:
    """Validate a plain dict into an ExperimentConfig; raise ConfigError naming the bad key."""
    from lmdistill.recipes import recipe_settings_class

    if not isinstance(data, dict):
        raise ConfigError("config: expected a mapping of keys at the top level")
    data = copy.deepcopy(data)
    recipe = data.get("recipe")
    if isinstance(recipe, str):
        recipe = {"name": recipe}
    if recipe is None:
        raise ConfigError("recipe: required key is missing")
    if not isinstance(recipe, dict) or "name" not in recipe:
        raise ConfigError("recipe.name: required key is missing")
    settings_class = recipe_settings_class(recipe["name"])  # raises ConfigError for an unknown recipe
    try:
        recipe_settings = settings_class.model_validate(recipe)
    except ValidationError as err:
        _raise_first(err, "recipe")
    data["recipe"] = {"name": recipe["name"]}
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as err:
        _raise_first(err)
    # Keep the recipe's own class so recipes read typed settings (`config.recipe.temperature`).
    object.__setattr__(config, "recipe", recipe_settings)
    return config


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (numbers, lists, ...)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected KEY=VALUE, e.g. --set recipe.temperature=2.0")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment}: empty key")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str) and part in ("teacher", "recipe") and i == 0:
            child = node[part] = {"path" if part == "teacher" else "name": child}
        elif not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def load_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML file (or a dict), apply overrides, validate. Relative data paths are kept as given."""
    if isinstance(source, dict):
        data = copy.deepcopy(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
    for assignment in overrides or []:
        apply_override(data, assignment)
    config = parse_config(data)
    if not isinstance(source, dict):
        config._base_dir = Path(source).resolve().parent
    return config


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """A plain dict of the full config (recipe settings included), for hashing and reports."""
    data = config.model_dump(mode="json")
    data["recipe"] = config.recipe.model_dump(mode="json")
    return data
