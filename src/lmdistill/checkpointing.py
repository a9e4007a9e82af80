"""What lets a killed run resume to the same student: checkpoints that are complete or absent, and a
data order and random draws that do not depend on where the run was interrupted.

HF Trainer writes `checkpoint-N` in place, file by file, and `get_last_checkpoint` picks the highest
N whether or not its files are all there: a kill during a save would resume from a half-written
checkpoint. Here a checkpoint is written under `.tmp-checkpoint-N/`, gets a manifest (the size of
every file) as its last file, and is renamed into place (a rename within one folder is atomic); on
resume the newest checkpoint whose manifest matches the files on disk is used, so a checkpoint
damaged some other way (copied half, truncated by a full disk) is skipped as well. Old checkpoints
are removed by renaming them to `.del-*` first, so a kill during the removal leaves nothing that
looks like a checkpoint. What the Trainer restores from a checkpoint: weights, optimizer, scheduler,
the global step and log history, and the python/numpy/torch RNG states; it skips the batches already
seen in the current epoch. This protects against the process dying (kill -9, out of memory), not
against power loss: files are not fsync'ed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from lmdistill import killpoint
from lmdistill.io_utils import read_seal, seal_dir

logger = logging.getLogger("lmdistill")
MANIFEST = "lmdistill-checkpoint.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def remove_dir(path: Path) -> None:
    """Delete a folder so that a kill midway leaves no partial folder under its name."""
    if not path.exists():
        return
    trash = path.with_name(f".del-{path.name}-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def publish_checkpoint(staged: Path, target: Path) -> None:
    """Seal a fully written checkpoint folder with its manifest and rename it to `target`."""
    seal_dir(staged, name=MANIFEST)
    killpoint.hit("checkpoint-publish")
    remove_dir(target)  # a stale copy of the same step (never the one a resume started from)
    os.replace(staged, target)


def is_complete(checkpoint: Path) -> bool:
    """True when the checkpoint's manifest exists and every file it lists has its recorded size."""
    return read_seal(checkpoint, name=MANIFEST) is not None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """`checkpoint-N` folders of a stage, oldest step first."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def last_complete_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that passes `is_complete`; incomplete ones are logged and skipped."""
    for checkpoint in reversed(list_checkpoints(run_dir)):
        if is_complete(checkpoint):
            return checkpoint
        logger.warning("%s is incomplete (interrupted write, or not written by lmdistill): not used", checkpoint)
    return None


def clean_partial(run_dir: Path) -> None:
    """Remove what interrupted writes left in a stage folder: staging, trash and incomplete checkpoints."""
    if not run_dir.is_dir():
        return
    for path in run_dir.iterdir():
        if path.name.startswith((".tmp-", ".del-")):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    for checkpoint in list_checkpoints(run_dir):
        if not is_complete(checkpoint):
            remove_dir(checkpoint)


def tidy_finished(run_dir: Path) -> None:
    """A finished stage keeps no checkpoints: remove those a kill right after `done.json` left behind."""
    clean_partial(run_dir)
    for checkpoint in list_checkpoints(run_dir):
        remove_dir(checkpoint)


def remove_leftovers(parent: Path, name: str) -> None:
    """Remove the temporary folders that an interrupted `atomic_dir(parent / name)` left behind."""
    for path in list(parent.glob(f".tmp-{name}-*")) + list(parent.glob(f".old-{name}-*")):
        shutil.rmtree(path, ignore_errors=True)


def rotate(run_dir: Path, keep: int | None) -> None:
    """Keep the `keep` newest checkpoints (all when keep is None or <= 0)."""
    if not keep or keep <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep]:
        remove_dir(old)
        killpoint.hit("checkpoint-rotate")


class EpochSeededLengthSampler(LengthGroupedSampler):
    """`group_by_length` order as a function of (seed, epoch) alone.

    HF's LengthGroupedSampler draws its permutation from the global torch RNG when an epoch starts,
    so the order of epoch e depends on every random draw of epochs 0..e-1 (dropout): a run resumed
    inside epoch e >= 1 starts from a freshly seeded RNG and would see another order than the
    uninterrupted run. (`random` sampling is already seeded per epoch by accelerate.)
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls it (through accelerate) before each epoch
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def batch_seed(seed: int, epoch: int, rows: list[int]) -> int:
    """A 63-bit seed from the stage seed, the epoch and the dataset rows of one batch."""
    data = np.asarray([seed, epoch, *rows], dtype=np.int64).tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little") >> 1


@contextmanager
def seeded_rng(seed: int):
    """Run a block under its own torch/numpy/python RNG, seeded by `seed`; the global RNG states are
    restored afterwards, so the block neither reads nor advances them."""
    states = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


class SeededCollate:
    """Runs a collator under an RNG of its own, seeded by (seed, epoch, the batch's dataset rows).

    A collator that draws random numbers (MLM masking) would otherwise draw from the global RNG that
    dropout uses, at times set by the DataLoader's prefetching: a resumed run, whose Trainer restores
    the RNG only after the first batches are collated, would mask those batches differently and give
    dropout another stream. Seeded by batch, the masks are a function of (seed, epoch, rows), and the
    collator no longer touches the training RNG. Rows come from the `_index` column; without it the
    collator runs as it is.
    """

    def __init__(self, collate, seed: int, index_key: str = "_index"):
        self.collate, self.seed, self.index_key = collate, seed, index_key
        self.epoch = 0  # set by the Trainer before each epoch's DataLoader iterator is made

    def __call__(self, features: list[dict]):
        rows = [f.get(self.index_key) for f in features]
        if any(row is None for row in rows):
            return self.collate(features)
        with seeded_rng(batch_seed(self.seed, self.epoch, [int(r) for r in rows])):
            return self.collate(features)
