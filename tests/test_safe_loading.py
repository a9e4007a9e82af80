"""Safe by default: a pickled `.bin` that would run code is refused (transformers loads `.bin` with
torch.load(weights_only=True)); safetensors wins where both exist; model code shipped with a
checkpoint runs only with `teacher.trust_remote_code: true`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertForSequenceClassification

from conftest import REPO, sst2_config
from lmdistill import ConfigError
from lmdistill.api import distill


class Payload:
    """Unpickling this calls open(marker, "w"): it creates a file, as a real attack would run code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_checkpoint(folder: Path, marker: Path, tiny_classifier_dir: Path) -> Path:
    """A classifier folder whose weights are a pytorch_model.bin with a code-running pickle inside."""
    shutil.copytree(tiny_classifier_dir, folder)
    model = BertForSequenceClassification.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save({**model.state_dict(), "payload": Payload(marker)}, folder / "pytorch_model.bin")
    return folder


def test_the_payload_is_live(tiny_classifier_dir, tmp_path):
    """The pickle really runs code when unpickled without weights_only: the tests below prove something."""
    marker = tmp_path / "pwned"
    folder = malicious_checkpoint(tmp_path / "evil", marker, tiny_classifier_dir)
    torch.load(folder / "pytorch_model.bin", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_malicious_bin_is_refused_and_never_run(role, tiny_classifier_dir, tmp_path, cache_dir):
    marker = tmp_path / "pwned"
    evil = malicious_checkpoint(tmp_path / "evil", marker, tiny_classifier_dir)
    config = sst2_config(tiny_classifier_dir, tmp_path / "out", cache_dir)
    if role == "teacher":
        config["teacher"]["path"] = str(evil)
    else:
        config["student"] = {"path": str(evil)}
    with pytest.raises(ConfigError, match=rf"^{role}.path: the .bin weights of .* hold more than tensors") as err:
        distill(config)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_safetensors_is_loaded_when_both_exist(tiny_classifier_dir, tmp_path, cache_dir):
    marker = tmp_path / "pwned"
    evil = malicious_checkpoint(tmp_path / "evil", marker, tiny_classifier_dir)
    shutil.copy(tiny_classifier_dir / "model.safetensors", evil / "model.safetensors")
    from lmdistill.models.teacher import load_model

    model, missing = load_model(BertForSequenceClassification, str(evil), {})
    assert missing == [] and not marker.exists()


def run_cli(config: dict, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "lmdistill.cli", "run", str(path), *extra], env=env,
                          capture_output=True, text=True, timeout=600)


CUSTOM_CODE = '''
from pathlib import Path

Path({marker!r}).touch()  # importing this file is running the checkpoint's code

from transformers import BertConfig, BertForSequenceClassification


class CustomConfig(BertConfig):
    model_type = "custom-bert"


class CustomModel(BertForSequenceClassification):
    config_class = CustomConfig
'''


def test_remote_code_runs_only_when_trusted(tiny_classifier_dir, tmp_path):
    """A checkpoint with its own model code (auto_map) is refused by default, with one line naming the
    key; with teacher.trust_remote_code: true its code is imported and the run completes."""
    marker = tmp_path / "code-ran"
    folder = tmp_path / "custom"
    shutil.copytree(tiny_classifier_dir, folder)
    (folder / "custom.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    config_file = folder / "config.json"
    data = json.loads(config_file.read_text())
    data.update(model_type="custom-bert", architectures=["CustomModel"],
                auto_map={"AutoConfig": "custom.CustomConfig",
                          "AutoModelForSequenceClassification": "custom.CustomModel"})
    config_file.write_text(json.dumps(data))
    config = sst2_config(folder, tmp_path / "out", tmp_path / "cache")
    config["bench"]["enabled"] = False
    refused = run_cli(config, tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "lmdistill: error: teacher.path: ") and "teacher.trust_remote_code: true" in refused.stderr
    assert "Traceback" not in refused.stderr and not marker.exists()
    assert not (tmp_path / "out").exists()
    trusted = run_cli(config, tmp_path, "--set", "teacher.trust_remote_code=true")
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert marker.exists() and (tmp_path / "out" / "student" / "config.json").is_file()
