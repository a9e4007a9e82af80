"""The output folder of a run: whose it is, which config made it, what may change on `--resume`.

A run writes `OUTPUT/.lmdistill-run.json` (the marker) before anything else in the folder:

    {"format": 1, "lmdistill": "0.1.0",
     "config": {...},            the full config the run started with
     "config_hash": "...",       sha256 of the keys that shape the result (all but RESUME_MAY_CHANGE)
     "data": {"task.train": "...", "task.eval": "..."},   content hashes of the data files
     "runs": [{"started": "2025-01-01T12:00:00Z", "resumed": false},
              {"started": "...", "resumed": true, "changed": {"training.logging_steps": [20, 5]}}]}

- `--overwrite` (and `lmdistill demo`) delete a folder only when it carries the marker or is empty,
  and never the current folder or one that contains it.
- `--resume` continues only a folder with the marker, and only when the config differs from the
  recorded one in RESUME_MAY_CHANGE keys alone; otherwise one line names the changed keys.
- Each stage folder gets `lmdistill-stage.json` ({"stage", "config_hash"}) before it trains, so a
  finished or half-trained stage is only ever reused under the config hash that made it.

Nothing here writes before `prepare_output`, which the pipeline calls after every check has passed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from lmdistill.errors import ConfigError
from lmdistill.io_utils import atomic_write_json, files_fingerprint, hash_json

MARKER = ".lmdistill-run.json"
STAGE_RECORD = "lmdistill-stage.json"
FORMAT = 1

# Keys that cannot change the trained student, the data it saw or its scores: where files go,
# logging and checkpoint cadence, the evaluation batch size, torch's thread count, and the
# latency/memory measurement. A resume may change them; every other key (including any key added
# later) must be equal. training.num_threads can change the last bits of float sums (the order of
# parallel reductions), not the training itself. training.dataloader_num_workers is NOT here: masked
# LM masks are drawn in the workers, so the worker count changes which tokens are masked.
RESUME_MAY_CHANGE = (
    "output",
    "cache_dir",
    "bench",
    "training.logging_steps",
    "training.save_steps",
    "training.save_total_limit",
    "training.eval_batch_size",
    "training.num_threads",
)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}. Lists are values; an empty mapping is a value too."""
    if not isinstance(data, dict) or not data:
        return {prefix: data} if prefix else {}
    flat = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def may_change(key: str) -> bool:
    return any(key == name or key.startswith(name + ".") for name in RESUME_MAY_CHANGE)


def config_hash(config: dict) -> str:
    """sha256 of the keys that shape the result (the config minus RESUME_MAY_CHANGE)."""
    return hash_json({k: v for k, v in flatten(config).items() if not may_change(k)})


def changed_keys(old: dict, new: dict) -> dict[str, list]:
    """{dotted key: [old value, new value]} for every key whose value differs (missing: None)."""
    before, after = flatten(old), flatten(new)
    return {key: [before.get(key), after.get(key)] for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)}


def data_hashes(config, resolve) -> dict[str, str]:
    """Content hashes of the train and eval files (a brat folder: its .txt and .ann files; a hub dataset:
    its name). `resolve(path)` finds a file."""
    hashes = {}
    for key in ("train", "eval"):
        source = getattr(config.task, key)
        path = resolve(source)
        if path is not None and path.is_file():
            hashes[f"task.{key}"] = files_fingerprint([path])
        elif path is not None and path.is_dir():
            hashes[f"task.{key}"] = files_fingerprint(sorted([*path.glob("*.ann"), *path.glob("*.txt")]))
        else:
            hashes[f"task.{key}"] = hash_json(source)
    return hashes


def read_marker(output: Path) -> dict | None:
    path = output / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(f"output: {path} is unreadable; this run folder cannot be resumed") from None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT or not isinstance(marker.get("config"), dict):
        raise ConfigError(f"output: {path} is not a run record this lmdistill version can read")
    return marker


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_deletable(output: Path) -> None:
    """--overwrite may delete only an lmdistill run folder (it has the marker), never a parent of cwd."""
    rule = f"--overwrite (and demo) delete only a folder that lmdistill made (it holds {MARKER}) or an empty one"
    if output.is_symlink():
        raise ConfigError(f"output: {output} is a symbolic link; {rule}")
    target, cwd = output.resolve(), Path.cwd().resolve()
    if target == cwd or target in cwd.parents or target == Path.home().resolve():
        raise ConfigError(f"output: {output} is the current folder, a folder that holds it, or your home folder; "
                          "lmdistill never deletes it: choose another output")
    try:
        ours = read_marker(output) is not None
    except ConfigError:
        ours = False
    if not ours:
        raise ConfigError(f"output: {output} is not empty and was not made by lmdistill; {rule}: "
                          "delete it yourself or choose another output")


def check_creatable(folder: Path, key: str) -> None:
    """`folder` exists and is writable, or can be created (its nearest existing parent is writable)."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}: {existing} is a file, so {folder} cannot be created")
    try:  # a real write, not os.access: root passes permission bits, and a file system may be read-only
        tempfile.TemporaryFile(dir=existing).close()
    except OSError:
        raise ConfigError(f"{key}: {existing} is not writable" + (
            f", so {folder} cannot be created" if existing != folder.absolute() else "")) from None


def _check_resume(output: Path, marker: dict, config: dict, data: dict[str, str]) -> None:
    """The config may differ from the recorded one in RESUME_MAY_CHANGE keys only; the data not at all."""
    changed = {k: v for k, v in changed_keys(marker["config"], config).items() if not may_change(k)}
    if changed:
        listed = ", ".join(f"{k} ({_shown(old)} -> {_shown(new)})" for k, (old, new) in changed.items())
        raise ConfigError(f"--resume: the config differs from the one that started {output} in {listed}; "
                          "resume with the recorded config, or start a new run (--overwrite or another output)")
    for key, value in data.items():
        if marker.get("data", {}).get(key) not in (None, value):
            raise ConfigError(f"--resume: {key}: the file's content changed since the run in {output} started; "
                              "start a new run (--overwrite or another output)")
    wanted = config_hash(config)
    stages = output / "stages"
    for folder in sorted(stages.iterdir()) if stages.is_dir() else []:
        if not folder.is_dir():
            continue
        record = folder / STAGE_RECORD
        try:
            recorded = json.loads(record.read_text()).get("config_hash")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            recorded = None
        if recorded != wanted:
            why = "was trained under another config" if recorded else f"has no readable {STAGE_RECORD}"
            raise ConfigError(f"--resume: stage folder {folder} {why}; start a new run "
                              "(--overwrite or another output)")


def check_output(output: Path, resume: bool, overwrite: bool, config: dict, data: dict[str, str]) -> dict | None:
    """Check that this run may use `output`. Writes nothing. Returns the marker of the run that
    --resume continues (None for a new run). `config` is the full config dict, `data` data_hashes()."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: give one of them, not both")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output: {output} is a file, not a folder")
    if output.is_dir() and any(output.iterdir()):
        if resume:
            marker = read_marker(output)
            if marker is None:
                raise ConfigError(f"--resume: {output} holds no {MARKER}, so it is not an lmdistill run "
                                  "(or was made by an older lmdistill); nothing to resume")
            _check_resume(output, marker, config, data)
            return marker
        if not overwrite:
            raise ConfigError(f"output: {output} already exists; pass --resume to continue it, or --overwrite")
        _check_deletable(output)
    else:
        check_creatable(output, "output")
    return None


def prepare_output(output: Path, overwrite: bool, config: dict, data: dict[str, str], previous: dict | None,
                   version: str) -> dict:
    """Start (or continue) the run in `output`: delete an old run folder on --overwrite, write the
    marker and, for a new run, config.json. Call on the main process only, after every check.
    Returns the marker as written."""
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if overwrite and output.is_dir() and any(output.iterdir()):
        _check_deletable(output)  # checked before; again, right before the only delete
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    if previous is None:
        marker = {"format": FORMAT, "lmdistill": version, "config": config, "config_hash": config_hash(config),
                  "data": data, "runs": [{"started": started, "resumed": False}]}
    else:
        changed = changed_keys(previous["config"], config)
        marker = {**previous, "runs": [*previous.get("runs", []), {"started": started, "resumed": True,
                                                                   "changed": changed}]}
    atomic_write_json(output / MARKER, marker)
    if previous is None or not (output / "config.json").is_file():
        atomic_write_json(output / "config.json", marker["config"])
    return marker


def record_stage(stage_dir: Path, name: str, hash_: str) -> None:
    """Note the config hash a stage trains under, before it writes anything else."""
    if not (stage_dir / STAGE_RECORD).is_file():
        atomic_write_json(stage_dir / STAGE_RECORD, {"stage": name, "config_hash": hash_})
