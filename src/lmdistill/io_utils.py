"""Atomic writes, sealed folders, file locks and content hashes (remembered, so big files are read once)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dir(target: str | Path):
    """Yield a temporary folder next to `target`; on success rename it into place.

    An interrupted write leaves only a `.tmp-*` folder, never a half-written `target`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".old-{target.name}-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_json(path: str | Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def hash_json(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


SETTLE_NS = 2_000_000_000


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    # ctime cannot be set by tools that preserve mtime (cp -p, rsync -a): a rewrite always changes it.
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_fingerprint(path: str | Path, memo_dir: str | Path | None = None) -> str:
    """SHA-256 of a file's bytes (hex), hashed once and then remembered.

    path:     the file (symlinks are followed: a hub cache blob is hashed once for all its links).
    memo_dir: a folder for the memo, e.g. `<cache_dir>/hashes`; None hashes every time. One small
              JSON file per file path records (size, mtime_ns, ctime_ns, inode, device) and the hash;
              the hash is reused while all five match, so a multi-GB checkpoint is read once, not on
              every run. Safe for concurrent processes (the memo is written atomically; at worst two
              processes hash the same file once each).
    """
    path = Path(path).resolve()
    stat = _stat_key(path)
    memo = Path(memo_dir) / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json" if memo_dir else None
    if memo is not None and memo.is_file():
        try:
            entry = json.loads(memo.read_text())
            if entry.get("path") == str(path) and entry.get("stat") == stat:
                return entry["sha256"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged memo is rebuilt below
    value = sha256_file(path)
    # Remember it only if the file did not change while it was read, and was not written in the last
    # two seconds: a second write within the clock's granularity could leave the same stat behind.
    settled = time.time_ns() - max(stat[1], stat[2]) > SETTLE_NS
    if memo is not None and settled and _stat_key(path) == stat:
        atomic_write_json(memo, {"path": str(path), "stat": stat, "sha256": value})
    return value


def files_fingerprint(paths: list[Path], memo_dir: str | Path | None = None) -> str:
    """One hash of several files: their names and `file_fingerprint`s, in name order."""
    return hash_json(sorted((Path(p).name, file_fingerprint(p, memo_dir)) for p in paths))


@contextmanager
def file_lock(path: str | Path, waiting_message: str | None = None):
    """Hold an exclusive lock on `path` (created if absent) for the duration of the block.

    Advisory (`fcntl.flock`): it orders processes that take the same lock, e.g. two runs building the
    same cache entry; the kernel releases it when the holder dies, so a killed run never leaves a
    stale lock behind.
    """
    import fcntl
    import logging

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting_message:
                logging.getLogger("lmdistill").info(waiting_message)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


SEAL = "lmdistill-entry.json"


def _file_sizes(folder: Path, skip: str) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != skip}


def seal_dir(folder: str | Path, info: dict | None = None, name: str = SEAL) -> None:
    """Write, as the last file of a fully written folder, a manifest of its files' sizes (+ `info`)."""
    folder = Path(folder)
    atomic_write_json(folder / name, {**(info or {}), "files": _file_sizes(folder, name)})


def read_seal(folder: str | Path, name: str = SEAL) -> dict | None:
    """The folder's manifest when every file it lists exists with its recorded size, else None."""
    folder = Path(folder)
    try:
        seal = json.loads((folder / name).read_text())
        return seal if seal["files"] and seal["files"] == _file_sizes(folder, name) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
