"""Typed experiment config: one YAML file is one experiment.

`load_config(path, overrides)` reads YAML, applies `--set a.b=value` overrides and validates the
result once. Every error names the full key path, for example `recipe.temprature: unknown key`.
Each recipe declares its own settings class (see `lmdistill.recipes`); `recipe:` is validated
against the class of the recipe it names.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from lmdistill.errors import ConfigError

TaskKind = Literal["classification", "token-classification", "question-answering", "language-modeling",
                   "prompt-classification"]

# The learning-rate schedules of transformers' SchedulerType that run with no further settings. The
# others need an eval loop (reduce_lr_on_plateau, greedy) or scheduler kwargs lmdistill does not pass.
LrScheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                      "constant_with_warmup", "inverse_sqrt"]
MAX_SEED = 2**32 - 1  # numpy's seed range, which transformers.set_seed also seeds


def _not_a_bool(value: Any) -> Any:
    # pydantic would read `true` as 1 for a number; in a config that is always a mistake.
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


# Numbers: finite (the Strict base rejects nan and inf) and never a bool. Bounds are set per field.
Int = Annotated[int, BeforeValidator(_not_a_bool)]
Float = Annotated[float, BeforeValidator(_not_a_bool)]
Text = Annotated[str, Field(min_length=1)]  # a name, path or column: never empty
# A layer map: `uniform`, `last`, or explicit [student, teacher] pairs in hidden_states numbering.
LayerPair = Annotated[list[Annotated[Int, Field(ge=0)]], Field(min_length=2, max_length=2)]
LayerMap = Literal["uniform", "last"] | Annotated[list[LayerPair], Field(min_length=1)]


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored; floats are finite."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TeacherConfig(Strict):
    """Where the teacher comes from, and whether it is fine-tuned on the task first."""

    path: Text = "minilm"  # `minilm` (packaged MiniLM-L6), `smollm2` (packaged SmolLM2-135M), a folder or a hub name
    gguf_file: Text | None = None  # load a GGUF checkpoint from `path` (converted once, then cached)
    revision: Text | None = None  # hub teachers: a branch, tag or commit (default: the hub's `main`)
    trust_remote_code: bool = False  # run model code shipped with the checkpoint (teacher, student, tokenizer)
    finetune: Literal["auto", "always", "never"] = "auto"  # auto: fine-tune when the task head is untrained
    epochs: Float = Field(2.0, gt=0)
    learning_rate: Float = Field(5.0e-5, gt=0, le=1)
    batch_size: Int | None = Field(None, ge=1)  # default: training.batch_size
    seed: Int = Field(42, ge=0, le=MAX_SEED)  # teacher fine-tuning seed: one teacher per task, shared by every student seed


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

    type: Text = "full"  # full | longformer | bigbird | nystromformer | lsg
    max_length: Int | None = Field(None, ge=8)  # positions of the student; default: the teacher's
    window: Int | None = Field(None, ge=2)  # longformer: attention_window (even; window/2 tokens each side)
    block_size: Int | None = Field(None, ge=1)  # bigbird: block_size; lsg: local block
    num_random_blocks: Int | None = Field(None, ge=0)  # bigbird
    num_landmarks: Int | None = Field(None, ge=1)  # nystromformer
    sparse_factor: Int | None = Field(None, ge=0)  # lsg: keys/values averaged over this many tokens (0: no sparse)
    sparse_blocks: Int | None = Field(None, ge=0)  # lsg: compressed blocks on each side beyond the local ones
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

    corpus: Text | Annotated[list[Text], Field(min_length=1)]  # plain-text files or globs (e.g. books)
    max_tokens: Int = Field(2_000_000, ge=1)  # corpus tokens read in all
    long_length: Int | None = Field(None, ge=8)  # long passages; default: the student's positions
    short_length: Int = Field(512, ge=8)  # short passages
    short_fraction: Float = Field(0.5, ge=0, le=1)  # share of the tokens in short passages
    layer_map: LayerMap = "uniform"  # student -> teacher hidden states
    epochs: Float = Field(1.0, gt=0)
    learning_rate: Float | None = Field(None, gt=0, le=1)  # None: training.learning_rate
    batch_size: Int = Field(4, ge=1)  # passages per step (long passages are long)


class StudentConfig(Strict):
    """How the student is built. Exactly one of layers / num_layers / config / path; `attention`
    turns it into an efficient-attention model (models/efficient.py)."""

    layers: list[Annotated[Int, Field(ge=0)]] | None = Field(None, min_length=1)  # keep these teacher layers (0-based)
    num_layers: Int | None = Field(None, ge=1)  # keep this many teacher layers, picked uniformly
    config: dict[str, Any] | None = None  # overrides on the teacher's config; random initialisation
    path: Text | None = None  # any HF folder or hub name
    init_from: Literal["finetuned", "pretrained"] = "finetuned"  # which teacher weights a layer subset copies
    attention: AttentionConfig | None = None  # efficient attention: type, max_length, window / block sizes
    general: GeneralDistillationConfig | None = None  # a task-agnostic corpus stage before the recipe's stages

    @field_validator("layers")
    @classmethod
    def _distinct(cls, layers):
        if layers is not None and len(set(layers)) != len(layers):
            raise ValueError(f"{layers} repeats a layer")
        return layers

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("layers", "num_layers", "config", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of layers, num_layers, config, path (got {given or 'none'})")
        return self


class TaskConfig(Strict):
    """The task and its data files (local paths, or `hub:NAME@SPLIT` for a hub dataset)."""

    kind: TaskKind
    train: Text
    eval: Text
    # One column, or two for sentence pairs (classification only; NER: the tokens column).
    text: Text | Annotated[list[Text], Field(min_length=1, max_length=2)] | None = None
    label: Text | None = None
    format: Literal["auto", "tsv", "csv", "jsonl", "json", "conll", "squad", "text", "brat"] = "auto"  # brat: a folder
    max_length: Int | None = Field(None, ge=8)  # default per task kind; capped at the model's positions
    doc_stride: Int = Field(128, ge=0)  # overlap between windows of a long context (QA) or document (NER)
    max_answer_tokens: Int = Field(30, ge=1)  # question answering: longest answer span considered, in tokens
    lm_type: Literal["auto", "masked", "causal"] = "auto"  # language modelling: auto follows the teacher
    mlm_probability: Float = Field(0.15, gt=0, lt=1)
    block_size: Int | None = Field(None, ge=8)  # language modelling: tokens per training block (default max_length)
    max_train_samples: Int | None = Field(None, ge=1)
    max_eval_samples: Int | None = Field(None, ge=1)
    hub_subset: Text | None = None  # hub datasets only: the configuration name (e.g. `sst2` of `glue`)
    # prompt-classification: "{text} Sentiment:" ({text}: the text column; {mask}: the answer slot of a masked LM)
    pattern: Text | None = None
    verbalizers: dict[str | int, str | list[str]] | None = None  # label -> its word(s), each one token

    @model_validator(mode="after")
    def _pairs_only_for_classification(self):
        if isinstance(self.text, list) and len(self.text) == 2 and self.kind != "classification":
            raise ConfigError(f"task.text: two columns (a sentence pair) need task.kind classification, not {self.kind}")
        return self


class TrainingConfig(Strict):
    epochs: Float = Field(3.0, gt=0)
    max_steps: Int = -1  # > 0: train this many steps per stage, whatever the epochs say
    batch_size: Int = Field(32, ge=1)  # global: processes x per-device batch x gradient_accumulation_steps
    eval_batch_size: Int = Field(64, ge=1)
    learning_rate: Float = Field(5.0e-5, gt=0, le=1)
    weight_decay: Float = Field(0.01, ge=0, le=1)
    warmup_ratio: Float = Field(0.1, ge=0, lt=1)  # a fraction of the steps (>= 1 would read as a step count)
    lr_scheduler: LrScheduler = "linear"
    max_grad_norm: Float = Field(1.0, ge=0)  # 0: no clipping
    gradient_accumulation_steps: Int = Field(1, ge=1)
    group_by_length: bool = True  # batches of similar length: less padding, faster on CPU
    seed: Int = Field(42, ge=0, le=MAX_SEED)
    logging_steps: Int = Field(20, ge=1)
    save_steps: Int = Field(500, ge=1)
    save_total_limit: Int = Field(2, ge=1)
    num_threads: Int | None = Field(None, ge=1)  # torch threads for training; None leaves torch's default
    bf16: bool = False  # bf16 autocast (mixed precision) for the trained network
    torch_compile: bool = False  # torch.compile the trained network for the stage (in place)
    dataloader_num_workers: Int = Field(0, ge=0)
    # Teacher-output cache: the teacher's outputs that a stage reads (its declared Needs) are computed
    # once per (teacher, data) by a pass before the stage and read from disk in every later epoch,
    # seed, run and recipe. See lmdistill.cache.
    cache_teacher: bool = True
    cache_top_k: Int = Field(256, ge=1)  # LM vocabularies: keep the k largest logits + the tail's log-sum-exp
    # LM vocabulary logits read at a higher temperature are not cached (the teacher runs live): the
    # tail bucket then holds most of the teacher's mass and the top-k KL drifts far from the full one
    # (benchmarks/bench_topk.py: k 256 is 6% low at T 1, 56% low at T 2 on SmolLM2/WikiText-2).
    cache_top_k_max_temperature: Float = Field(1.0, gt=0)
    cache_dtype: Literal["float16", "bfloat16", "float32"] = "float16"

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError("give a number of steps >= 1, or -1 to train for training.epochs")
        return value

    @field_validator("lr_scheduler", mode="before")
    @classmethod
    def _scheduler(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in get_args(LrScheduler):
            from transformers import SchedulerType

            if value in {s.value for s in SchedulerType}:
                raise ValueError(f"'{value}' needs an eval loop or scheduler settings that lmdistill does not "
                                 f"pass; choose from {', '.join(get_args(LrScheduler))}")
        return value


class LengthSearchConfig(Strict):
    """LAT-style evolutionary search of per-layer lengths (fractions of the input length) on the Pareto
    front of search score vs FLOPs; the score is measured on `samples` training examples, so the eval
    set stays unselected. See lmdistill.length_eval.search_lengths."""

    iterations: int = Field(6, ge=0)
    population: int = Field(10, ge=2)  # the initial population (keep ratios, then random genes)
    mutations: int = Field(8, ge=0)  # per iteration
    crossovers: int = Field(8, ge=0)
    mutation_prob: float = Field(0.5, gt=0, le=1)
    samples: int = Field(1000, ge=1)
    step: float = Field(0.05, gt=0, le=0.5)  # the grid of fractions
    report: int = Field(6, ge=1)  # Pareto configurations measured on the eval set and for latency
    seed: Int = Field(0, ge=0, le=MAX_SEED)


class BenchConfig(Strict):
    """How teacher and student are measured. Both get exactly the same settings."""

    enabled: bool = True
    batch_sizes: list[Annotated[Int, Field(ge=1)]] = Field([1, 32], min_length=1)
    seq_len: Int | None = Field(None, ge=1)  # default: the task's typical (median) eval length
    repeats: Int = Field(15, ge=1)  # forward passes per round (a third of it at batch >= 8)
    rounds: Int = Field(3, ge=1)  # teacher and student alternate; the figure is the median over rounds
    warmup: Int = Field(3, ge=0)
    num_threads: Int | None = Field(None, ge=1)  # default: torch's current thread count
    memory: bool = True  # peak memory, measured in a fresh process per model
    # Token pruning (a prunable student: recipe lad / lengthdrop, or a plain BERT/RoBERTa student converted
    # for the measurement): score and latency at each keep ratio (lmdistill.length_eval); report.json's
    # student.pruning. length_search: a LAT-style evolutionary search of per-layer lengths.
    keep_ratios: list[Annotated[Float, Field(gt=0, le=1)]] | None = None
    length_search: LengthSearchConfig | None = None
    pruning_seq_lens: list[Annotated[Int, Field(ge=1)]] = []  # their latency also at these lengths (e.g. [128]): latency_ms_at
    # Efficient-attention students: latency and peak memory against these lengths (cost_vs_length.*);
    # None: 512, 1024, ... up to the student's max_length; []: not measured.
    lengths: list[Annotated[Int, Field(ge=1)]] | None = None

    @field_validator("keep_ratios")
    @classmethod
    def _keep_ratios(cls, value):
        for ratio in value or []:
            if not 0 < ratio <= 1:
                raise ValueError(f"{ratio} is not a keep ratio; give numbers in (0, 1]")
        return value


class RecipeConfig(Strict):
    """Settings shared by every recipe. Each recipe subclasses this with its own keys."""

    name: str


def processes() -> int:
    """How many training processes share the global batch (torchrun sets WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


class ExperimentConfig(Strict):
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig
    task: TaskConfig
    recipe: RecipeConfig
    training: TrainingConfig = TrainingConfig()
    bench: BenchConfig = BenchConfig()
    output: Text
    cache_dir: Text | None = None  # teacher cache; default $LMDISTILL_CACHE or ~/.cache/lmdistill
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

    @model_validator(mode="after")
    def _batches_split_evenly(self):
        # Checked here, not in the trainer, so that it fails before the output folder is made.
        per_step = processes() * self.training.gradient_accumulation_steps
        for key, size in (("training.batch_size", self.training.batch_size),
                          ("teacher.batch_size", self.teacher.batch_size)):
            if size is not None and size % per_step:
                raise ConfigError(
                    f"{key}: {size} is not divisible by processes x training.gradient_accumulation_steps "
                    f"({processes()} x {self.training.gradient_accumulation_steps} = {per_step})"
                )
        return self


# ---- errors: one line that names the key ---------------------------------------------------------

def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The config section class a field holds (TrainingConfig for `training`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _section_model(arg)
        if found is not None:
            return found
    return None


def _key_path(root: type[BaseModel], loc: tuple, unknown_key: bool) -> tuple[list[str], type[BaseModel] | None]:
    """The user's key path of a pydantic error location, and the section class that holds its last key.

    pydantic puts union members ('str', 'list[int]', "literal['a','b']") and validator names in `loc`;
    walking the config classes tells them apart from the user's keys.
    """
    parts: list[str] = []
    model, holder = root, root
    for index, part in enumerate(loc):
        if isinstance(part, int):  # a list index
            parts.append(str(part))
            model = None
        elif model is not None and part in model.model_fields:
            parts.append(part)
            holder, model = model, _section_model(model.model_fields[part].annotation)
        elif unknown_key and index == len(loc) - 1:
            parts.append(str(part))
            holder = model
    return parts, holder


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_EXPECTED = {  # pydantic's type errors, said the way a config reader thinks of them
    "string_type": "a string", "list_type": "a list", "int_type": "an integer", "int_parsing": "an integer",
    "int_from_float": "a whole number", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false", "dict_type": "a mapping of keys",
    "model_type": "a mapping of keys", "model_attributes_type": "a mapping of keys",
}
_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"), "less_than_equal": ("<=", "le"),
           "less_than": ("<", "lt")}


def _expectation(error: dict) -> str:
    """What one pydantic error asked for, as `expected ...` / `must be ...`."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}"
    if kind in _BOUNDS:
        sign, name = _BOUNDS[kind]
        limit = ctx.get(name)
        return f"must be {sign} {limit:g}" if isinstance(limit, float) else f"must be {sign} {limit}"
    if kind == "invalid_key":
        return "keys must be strings"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"takes at most {ctx.get('max_length')} items"
    message = error["msg"].removeprefix("Value error, ")
    return "expected " + message.removeprefix("Input should be ") if message.startswith("Input should be ") else message


def _message(errors: list[dict]) -> str:
    """One message for the errors about one key (several when the key accepts a union of types)."""
    if len(errors) > 1:  # a union: a member that got past the type check says more than a type mismatch
        specific = [e for e in errors if e["type"] not in _EXPECTED and e["type"] != "literal_error"]
        errors = specific or errors
    parts = list(dict.fromkeys(_expectation(e) for e in errors))
    message = parts[0] + "".join(" or " + p.removeprefix("expected ") for p in parts[1:])
    value = errors[0].get("input")
    if errors[0]["type"] != "value_error" and isinstance(value, (int, float, str, list, type(None))):
        message += f" (got {_shown(value)})"
    return message


def _raise_first(err: ValidationError, root: type[BaseModel], prefix: str = "") -> None:
    """Raise one ConfigError for the first key pydantic rejected, naming its full path."""
    errors = err.errors()
    # An unknown key first: it often explains a missing one beside it (`kindd:` for `kind:`).
    errors.sort(key=lambda error: error["type"] != "extra_forbidden")
    located = []
    for error in errors:
        parts, _ = _key_path(root, tuple(error["loc"]), error["type"] == "extra_forbidden")
        located.append(([prefix] if prefix else []) + parts)
    first = located[0]
    # A union (e.g. `text: str | list`) reports one error per member: keep those about the first key,
    # and of them the ones that got furthest (the most specific key).
    same_key = [i for i, parts in enumerate(located) if parts[: len(first)] == first]
    depth = max(len(located[i]) for i in same_key)
    chosen = [i for i in same_key if len(located[i]) == depth]
    error, path = errors[chosen[0]], ".".join(located[chosen[0]])
    kind = error["type"]
    if kind == "extra_forbidden":
        _, holder = _key_path(root, tuple(error["loc"]), True)
        known = list(holder.model_fields) if holder is not None else []
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        hint = f" (did you mean {'.'.join(located[chosen[0]][:-1] + [close[0]])}?)" if close else ""
        raise ConfigError(f"{path}: unknown key{hint}") from None
    if kind == "missing":
        raise ConfigError(f"{path}: required key is missing") from None
    if error["loc"] and error["loc"][-1] == "[key]":  # a mapping key that is not a string (`1: x`)
        raise ConfigError(f"{path}: keys must be strings (got {_shown(error.get('input'))})") from None
    message = _message([errors[i] for i in chosen])
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
    if not isinstance(recipe, dict):
        raise ConfigError(f"recipe: expected a mapping of keys or a recipe name (got {_shown(recipe)})")
    if "name" not in recipe:
        raise ConfigError("recipe.name: required key is missing")
    if not isinstance(recipe["name"], str):
        raise ConfigError(f"recipe.name: expected a recipe name (got {_shown(recipe['name'])})")
    settings_class = recipe_settings_class(recipe["name"])  # raises ConfigError for an unknown recipe
    try:
        recipe_settings = settings_class.model_validate(recipe)
    except ValidationError as err:
        _raise_first(err, settings_class, "recipe")
    data["recipe"] = {"name": recipe["name"]}
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as err:
        _raise_first(err, ExperimentConfig)
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
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: the value {raw!r} is not valid YAML") from None


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line = key, line


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser when present
    """PyYAML keeps the last of two equal keys; a config with a repeated section is a mistake."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            except TypeError:  # an unhashable key: PyYAML reports it
                pass
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """The YAML document in `path`; ConfigError naming the file (and line) when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as err:
        raise ConfigError(f"{path}: key {err.key!r} is given twice (line {err.line})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None


def load_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML file (or a dict), apply overrides, validate. Relative data paths are kept as given."""
    if isinstance(source, dict):
        data = copy.deepcopy(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = read_yaml(path)
        data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping of keys at the top level (got {type(data).__name__})")
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
