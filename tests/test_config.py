"""Config: YAML + pydantic validation, errors naming the full key path, --set overrides."""

from __future__ import annotations

import pytest

from lmdistill.config import apply_override, load_config
from lmdistill.errors import ConfigError

BASE = {
    "teacher": "minilm",
    "student": {"layers": [0, 2, 4]},
    "task": {"kind": "classification", "train": "data/sst2/train.tsv", "eval": "data/sst2/dev.tsv",
             "text": "sentence", "label": "label"},
    "recipe": {"name": "kd", "temperature": 4.0, "alpha": 0.5},
    "training": {"epochs": 3, "batch_size": 32, "learning_rate": 5.0e-5, "seed": 42},
    "output": "runs/sst2-kd",
}


def test_issue_example_form_is_accepted():
    config = load_config(BASE)
    assert config.teacher.path == "minilm"
    assert config.recipe.temperature == 4.0 and config.recipe.alpha == 0.5
    assert config.student.layers == [0, 2, 4]


def test_yaml_file_and_overrides(tmp_path):
    import yaml

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(BASE))
    config = load_config(path, ["recipe.temperature=2.5", "training.epochs=1", "student.layers=[0, 5]"])
    assert config.recipe.temperature == 2.5
    assert config.training.epochs == 1
    assert config.student.layers == [0, 5]


@pytest.mark.parametrize("key, message", [
    ("recipe.temprature=2", r"recipe.temprature: unknown key \(did you mean recipe.temperature\?\)"),
    ("training.learnign_rate=1", r"training.learnign_rate: unknown key \(did you mean training.learning_rate\?\)"),
    ("task.colour=red", "task.colour: unknown key"),
    ("surprise=1", "surprise: unknown key"),
])
def test_unknown_key_names_full_path(key, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        load_config(BASE, [key])


def test_unknown_recipe():
    with pytest.raises(ConfigError, match=r"recipe.name: unknown recipe 'kdd' \(choose from: .*kd.*\)"):
        load_config(BASE, ["recipe.name=kdd"])


def test_bad_value_names_key():
    with pytest.raises(ConfigError, match="^recipe.alpha: "):
        load_config(BASE, ["recipe.alpha=3"])
    with pytest.raises(ConfigError, match="^task.kind: "):
        load_config(BASE, ["task.kind=poetry"])


def test_student_needs_exactly_one_source():
    with pytest.raises(ConfigError, match="^student: give exactly one of"):
        load_config(BASE, ["student.num_layers=3"])


def test_missing_required_key():
    data = {k: v for k, v in BASE.items() if k != "output"}
    with pytest.raises(ConfigError, match="^output: required key is missing$"):
        load_config(data)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_override({}, "recipe.temperature")
    with pytest.raises(ConfigError, match="output is not a section"):
        apply_override({"output": "x"}, "output.dir=1")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


# ---- bounds, choices and cross-field rules (issue 9): each fails at load time, naming the key ----------
@pytest.mark.parametrize("override, message", [
    ("training.gradient_accumulation_steps=0", "training.gradient_accumulation_steps: must be >= 1 (got 0)"),
    ("training.batch_size=0", "training.batch_size: must be >= 1 (got 0)"),
    ("training.lr_scheduler=cosinee", "training.lr_scheduler: expected 'linear', 'cosine', "),
    ("training.lr_scheduler=reduce_lr_on_plateau", "training.lr_scheduler: 'reduce_lr_on_plateau' needs an eval loop"),
    ("bench.batch_sizes=[]", "bench.batch_sizes: needs at least 1 item(s) (got [])"),
    ("bench.batch_sizes=[1,0]", "bench.batch_sizes.1: must be >= 1 (got 0)"),
    ("training.learning_rate=-1", "training.learning_rate: must be > 0 (got -1)"),
    ("training.learning_rate=5e5", "training.learning_rate: must be <= 1 (got"),
    ("training.epochs=-2", "training.epochs: must be > 0 (got -2)"),
    ("training.epochs=.nan", "training.epochs: must be a finite number"),
    ("training.warmup_ratio=1", "training.warmup_ratio: must be < 1 (got 1)"),
    ("training.max_steps=0", "training.max_steps: give a number of steps >= 1, or -1"),
    ("training.batch_size=true", "training.batch_size: expected a number, not true/false"),
    ("training.batch_size=2.5", "training.batch_size: expected a whole number (got 2.5)"),
    ("training.seed=4294967296", "training.seed: must be <= 4294967295"),
    ("teacher.batch_size=0", "teacher.batch_size: must be >= 1"),
    ("student.layers=[]", "student.layers: needs at least 1 item(s)"),
    ("student.layers=[0, 2, 0]", "student.layers: [0, 2, 0] repeats a layer"),
    ("student.layers=[-1]", "student.layers.0: must be >= 0"),
    ("task.max_length=4", "task.max_length: must be >= 8"),
    ("task.text=[a, b, c]", "task.text: takes at most 2 items"),
    ("task.text=5", "task.text: expected a string or a list (got 5)"),
    ("task.train=''", "task.train: must not be empty"),
    ("recipe.alpha=1.5", "recipe.alpha: must be <= 1 (got 1.5)"),
    ("recipe.temperature=0", "recipe.temperature: must be > 0 (got 0)"),
    ("training=5", "training: expected a mapping of keys (got 5)"),
    ("output=", "output: must not be empty"),
])
def test_bounds_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(BASE, [override])
    assert str(err.value).startswith(message), str(err.value)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match=r"^training.batch_size: 32 is not divisible by processes x "
                                          r"training.gradient_accumulation_steps \(1 x 3 = 3\)$"):
        load_config(BASE, ["training.gradient_accumulation_steps=3"])
    with pytest.raises(ConfigError, match=r"^teacher.batch_size: 9 is not divisible"):
        load_config(BASE, ["teacher.batch_size=9", "training.gradient_accumulation_steps=2"])
    with pytest.raises(ConfigError, match="^task.text: two columns"):
        load_config(BASE, ["task.kind=token-classification", "task.text=[a, b]"])
    with pytest.raises(ConfigError, match=r"^recipe.layer_map.0: takes at most 2 items"):
        load_config(BASE, ["recipe.name=lwd", "recipe.layer_map=[[1, 2, 3]]"])
    with pytest.raises(ConfigError, match=r"^recipe.layer_map: expected 'uniform' or 'last' or a list"):
        load_config(BASE, ["recipe.name=lwd", "recipe.layer_map=middle"])
    # max_steps > 0 replaces the epochs, and is not an error next to them.
    assert load_config(BASE, ["training.max_steps=5"]).training.max_steps == 5


def test_processes_count_in_the_batch_rule(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"processes x training.gradient_accumulation_steps \(3 x 1 = 3\)"):
        load_config(BASE)
    assert load_config(BASE, ["training.batch_size=33"]).training.batch_size == 33


def test_every_accepted_scheduler_runs_in_transformers():
    """The lr_scheduler choices are exactly the SchedulerType values that need nothing more."""
    import torch
    from transformers import SchedulerType, TrainingArguments, get_scheduler

    from typing import get_args

    from lmdistill.config import LrScheduler

    for name in get_args(LrScheduler):
        args = TrainingArguments(output_dir="unused", lr_scheduler_type=name, use_cpu=True, report_to=[])
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=4,
                                  scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        optimizer.step()
        scheduler.step()
    for name in {s.value for s in SchedulerType} - set(get_args(LrScheduler)):
        with pytest.raises(ConfigError, match=f"'{name}' needs an eval loop"):
            load_config(BASE, [f"training.lr_scheduler={name}"])


def test_every_number_has_a_lower_bound():
    """Every int/float key of every config section and recipe has a minimum (max_steps: -1 or >= 1)."""
    from lmdistill.config import ExperimentConfig
    from lmdistill.recipes import RECIPES

    def walk(schema, path, defs, found):
        if "$ref" in schema:
            walk(defs[schema["$ref"].split("/")[-1]], path, defs, found)
        for key in ("anyOf", "allOf", "oneOf"):
            for option in schema.get(key, []):
                walk(option, path, defs, found)
        # (pydantic writes a bound as minimum/exclusiveMinimum, or as ge/gt beside a validator)
        if schema.get("type") in ("integer", "number") and not {"minimum", "exclusiveMinimum", "ge", "gt", "enum", "const"} & set(schema):  # Literal: closed
            found.append(path)
        if "items" in schema:
            walk(schema["items"], path + "[]", defs, found)
        for name, sub in schema.get("properties", {}).items():
            walk(sub, f"{path}.{name}" if path else name, defs, found)

    unbounded = []
    for root, prefix in [(ExperimentConfig, "")] + [(r.settings_class, "recipe") for r in RECIPES.values()]:
        schema = root.model_json_schema()
        walk(schema, prefix, schema.get("$defs", {}), unbounded)
    assert sorted(set(unbounded)) == ["training.max_steps"]


def test_yaml_file_problems_name_the_file(tmp_path):
    import yaml

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(BASE) + "training: {epochs: 1}\n")
    with pytest.raises(ConfigError, match=r"exp.yaml: key 'training' is given twice \(line \d+\)$"):
        load_config(path)
    path.write_bytes(b"output: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"exp.yaml: not UTF-8 text"):
        load_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="^config: expected a mapping of keys at the top level"):
        load_config(path, ["training.epochs=1"])
    path.write_text(yaml.safe_dump(BASE))
    with pytest.raises(ConfigError, match=r"^--set training.epochs: the value '\[1' is not valid YAML$"):
        load_config(path, ["training.epochs=[1"])
    with pytest.raises(ConfigError, match=r"^recipe.name: expected a recipe name \(got \['kd'\]\)$"):
        load_config(path, ["recipe.name=[kd]"])
