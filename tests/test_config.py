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
