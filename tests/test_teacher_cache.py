"""The fine-tuned-teacher cache: every input that shapes the teacher is in its key, big files are
hashed once, damaged entries are never used, and concurrent runs end with one good entry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch

from conftest import DATA, REPO, sst2_config
from lmdistill import api, io_utils
from lmdistill.config import load_config
from lmdistill.models.teacher import converted_gguf_dir
from lmdistill.tasks import build_task

TESTS = Path(__file__).resolve().parent


@pytest.fixture()
def teacher_copy(tiny_bert_dir, tmp_path) -> Path:
    """A private copy of the tiny BERT (weights, config, tokenizer) that a test may change."""
    folder = tmp_path / "teacher"
    shutil.copytree(tiny_bert_dir, folder)
    return folder


def key_of(data: dict, memo: Path | None = None) -> str:
    config = load_config(data)
    task = build_task(config.task, config.search_dirs)
    return api.teacher_cache_key(config, task, str(Path(config.teacher.path).resolve()), memo)


def base(teacher: Path, tmp_path: Path) -> dict:
    return sst2_config(teacher, tmp_path / "out", tmp_path / "cache")


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_each_file_of_the_teacher_is_in_the_key(teacher_copy, tmp_path):
    config = base(teacher_copy, tmp_path)
    keys = {"original": key_of(config)}
    # Weights: one value changed, same file size (a size-based key would miss this).
    weights = teacher_copy / "model.safetensors"
    size = weights.stat().st_size
    state = safetensors.torch.load_file(str(weights))
    name = next(k for k in state if k.endswith("word_embeddings.weight"))
    state[name][0, 0] += 1.0
    safetensors.torch.save_file(state, str(weights), metadata={"format": "pt"})
    assert weights.stat().st_size == size
    keys["weights"] = key_of(config)
    edit_json(teacher_copy / "config.json", layer_norm_eps=1e-6)
    keys["config.json"] = key_of(config)
    tokenizer = json.loads((teacher_copy / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = (token for token, index in vocab.items() if index in (2000, 2001))
    vocab[first], vocab[second] = vocab[second], vocab[first]  # two token ids swapped
    (teacher_copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    keys["tokenizer.json"] = key_of(config)
    edit_json(teacher_copy / "tokenizer_config.json", do_lower_case=False)
    keys["tokenizer_config.json"] = key_of(config)
    assert len(set(keys.values())) == len(keys), keys
    # Files that cannot change the model do not change the key.
    (teacher_copy / "README.md").write_text("notes")
    assert key_of(config) == keys["tokenizer_config.json"]


def test_each_setting_that_shapes_the_teacher_is_in_the_key(teacher_copy, tmp_path, monkeypatch):
    config = base(teacher_copy, tmp_path)
    original = key_of(config)
    shaping = {
        "teacher.epochs": 3, "teacher.learning_rate": 2e-3, "teacher.batch_size": 8, "teacher.seed": 1,
        "teacher.trust_remote_code": True,
        "training.batch_size": 4,  # the teacher's batch size while teacher.batch_size is unset
        "training.weight_decay": 0.1, "training.warmup_ratio": 0.2, "training.lr_scheduler": "cosine",
        "training.max_grad_norm": 0.5, "training.gradient_accumulation_steps": 2,
        "training.group_by_length": False, "training.bf16": True, "training.dataloader_num_workers": 1,
        "task.max_length": 16, "task.max_train_samples": 32, "task.format": "tsv",
    }
    neutral = {  # the student's own settings, evaluation and bookkeeping
        "training.seed": 7, "training.epochs": 5, "training.learning_rate": 1e-2, "training.max_steps": 3,
        "training.logging_steps": 5, "training.save_steps": 7, "training.save_total_limit": 1,
        "training.eval_batch_size": 3, "task.max_eval_samples": 8, "task.eval": str(DATA / "sst2" / "train.tsv"),
        "student.layers": [1, 3], "recipe.temperature": 4.0, "bench.repeats": 9, "output": str(tmp_path / "x"),
    }
    seen = {original}
    for assignment, value in shaping.items():
        changed = load_config(config, [f"{assignment}={json.dumps(value)}"])
        key = api.teacher_cache_key(changed, build_task(changed.task), str(teacher_copy))
        assert key not in seen, assignment
        seen.add(key)
    for assignment, value in neutral.items():
        changed = load_config(config, [f"{assignment}={json.dumps(value)}"])
        assert api.teacher_cache_key(changed, build_task(changed.task), str(teacher_copy)) == original, assignment
    # The training data's content, and the cache format of this lmdistill version.
    data = tmp_path / "train.tsv"
    lines = (DATA / "sst2" / "train.tsv").read_text().splitlines()
    data.write_text("\n".join(lines) + "\n")
    same_data = {**config, "task": {**config["task"], "train": str(data)}}
    assert key_of(same_data) == original
    label = lines[1].rsplit("\t", 1)
    lines[1] = f"{label[0]}\t{1 - int(label[1])}"
    data.write_text("\n".join(lines) + "\n")
    assert key_of(same_data) not in seen
    monkeypatch.setattr(api, "TEACHER_CACHE_FORMAT", api.TEACHER_CACHE_FORMAT + 1)
    assert key_of(config) not in seen


def fake_hub(root: Path, tiny_bert_dir: Path) -> dict[str, str]:
    """A hub cache (as huggingface_hub lays it out) with one repo at two commits: main and v2."""
    repo = root / "models--lmdistill-test--tiny"
    commits = {"main": "1" * 40, "v2": "2" * 40}
    for ref, commit in commits.items():
        snapshot = repo / "snapshots" / commit
        shutil.copytree(tiny_bert_dir, snapshot)
        if ref == "v2":
            edit_json(snapshot / "config.json", layer_norm_eps=1e-6)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return commits


def test_hub_revision_is_pinned_and_in_the_key(tiny_bert_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    commits = fake_hub(tmp_path / "hub", tiny_bert_dir)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    keys, epsilons = {}, {}
    for revision in (None, "v2", commits["v2"]):
        data = base(Path("unused"), tmp_path)
        data["teacher"] = {**data["teacher"], "path": "lmdistill-test/tiny", "revision": revision}
        config = load_config(data)
        task = build_task(config.task)
        assert api.teacher_load_kwargs(config, "lmdistill-test/tiny")["revision"] == commits[
            "main" if revision is None else "v2"]
        teacher, *_ = api.load_teacher(config, task, tmp_path / "cache", needs_attentions=False)
        epsilons[revision] = teacher.config.layer_norm_eps
        keys[revision] = api.teacher_cache_key(config, task, "lmdistill-test/tiny")
    assert epsilons == {None: 1e-12, "v2": 1e-6, commits["v2"]: 1e-6}  # each revision loaded its own files
    assert keys["v2"] != keys[None]
    # A local folder has no revisions: setting one is an error, not silently ignored.
    data = base(tiny_bert_dir, tmp_path)
    data["teacher"]["revision"] = "v2"
    config = load_config(data)
    with pytest.raises(api.ConfigError, match="teacher.revision"):
        api.load_teacher(config, build_task(config.task), tmp_path / "cache", needs_attentions=False)


def test_gguf_conversion_is_keyed_by_content(tmp_path):
    """Two GGUF files of the same path and size but other bytes convert to different cache folders."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    first = converted_gguf_dir(gguf, tmp_path / "cache")
    gguf.write_bytes(b"GGUF" + bytes(99) + b"\x01")
    second = converted_gguf_dir(gguf, tmp_path / "cache")
    assert first != second and first.parent == second.parent
    gguf.write_bytes(b"GGUF" + bytes(100))
    assert converted_gguf_dir(gguf, tmp_path / "cache") == first


def test_big_files_are_hashed_once(tmp_path, monkeypatch):
    monkeypatch.setattr(io_utils, "SETTLE_NS", 0)
    reads = []
    real = io_utils.sha256_file
    monkeypatch.setattr(io_utils, "sha256_file", lambda path: reads.append(path) or real(path))
    memo = tmp_path / "hashes"
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    first = io_utils.file_fingerprint(weights, memo)
    assert io_utils.file_fingerprint(weights, memo) == first and len(reads) == 1  # remembered
    stat = weights.stat()
    weights.write_bytes(b"b" * 1000)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime, as `cp -p` leaves
    second = io_utils.file_fingerprint(weights, memo)
    assert second != first and len(reads) == 2  # the changed ctime gave it away
    os.utime(weights)  # touched, content unchanged: hashed again, same hash
    assert io_utils.file_fingerprint(weights, memo) == second and len(reads) == 3
    monkeypatch.setattr(io_utils, "SETTLE_NS", 10**12)  # a file written just now is not remembered
    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(b"c")
    io_utils.file_fingerprint(fresh, memo)
    io_utils.file_fingerprint(fresh, memo)
    assert reads[-2:] == [fresh.resolve(), fresh.resolve()]


def test_damaged_entries_are_never_used(tiny_bert_dir, tmp_path):
    """An entry that is not sealed, or whose files do not match its seal, is rebuilt."""
    data = base(tiny_bert_dir, tmp_path)
    data["teacher"]["epochs"] = 0.25
    config = load_config(data)
    task = build_task(config.task)

    def finetune():
        teacher, tokenizer, source, _ = api.load_teacher(config, task, tmp_path / "cache", False)
        return api.finetune_teacher(teacher, tokenizer, source, config, task, tmp_path / "cache", False)

    _, folder, info = finetune()
    assert not info["reused_cache"] and io_utils.read_seal(folder)
    assert finetune()[2]["reused_cache"]
    weights = Path(folder) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated, as by a full disk
    assert not finetune()[2]["reused_cache"]
    (Path(folder) / io_utils.SEAL).unlink()  # an entry written without a seal (interrupted, older version)
    assert not finetune()[2]["reused_cache"]
    assert finetune()[2]["reused_cache"]
    assert sorted(p.name for p in (tmp_path / "cache" / "teachers").iterdir()) == [
        info["cache_key"], f"{info['cache_key']}.lock"]


def test_two_runs_fine_tuning_the_same_teacher_at_once(tiny_bert_dir, tmp_path):
    """Both start fine-tuning together; the lock makes one build the entry and the other reuse it."""
    data = base(tiny_bert_dir, tmp_path)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(data))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    workers = [subprocess.Popen([sys.executable, str(TESTS / "cache_worker.py"), str(config_file), str(tmp_path),
                                 name], env=env, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    logs = [worker.communicate(timeout=600)[1] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    results = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ("a", "b")]
    assert sorted(r["reused_cache"] for r in results) == [False, True]
    waited = logs[[r["reused_cache"] for r in results].index(True)]
    assert "waiting for another run fine-tuning the same teacher" in waited  # they did overlap
    assert results[0]["weights"] == results[1]["weights"]  # the waiting run loaded what the other built
    key = results[0]["cache_key"]
    teachers = tmp_path / "cache" / "teachers"
    assert sorted(p.name for p in teachers.iterdir()) == [key, f"{key}.lock"]
    seal = io_utils.read_seal(teachers / key)
    assert seal is not None and seal["key"] == key
    from cache_worker import tensor_digest

    cached = safetensors.torch.load_file(str(teachers / key / "model.safetensors"))
    assert tensor_digest(cached) == results[0]["weights"]
