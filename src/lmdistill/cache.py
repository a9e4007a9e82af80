"""Teacher-output cache: what a stage reads of the frozen teacher, computed once and read from disk.

Why. A distillation run pays the teacher's forward pass on every batch of every epoch, of every seed
and every recipe tried, although the teacher's inputs never change. With the cache the teacher runs
once per (teacher, data) over the training set; every later epoch, seed, run and recipe reads its
outputs from memory-mapped files, and the teacher never has to sit on the training device.

What is stored is what the stage declares (`Stage.teacher_needs`), one *field* each:
  `logits`          all logits, for label sets: [C] per example (classification) or [C] per token
                    (token classification, QA start/end);
  `topk<k>-T<t>`    language-model vocabularies (logits as wide as the teacher's vocabulary): per token
                    the k largest logits (values in `cache_dtype`, ids int32) and the log-sum-exp of all
                    the others at temperature t (fp32); the loss is then `losses.topk_kd_kl`;
  `hidden<i>`       hidden_states[i] per token, only for the declared layers.
Float values are stored in `training.cache_dtype` (float16 by default; float32 stores them exactly).

Layout. `cache_dir/outputs/<data+teacher key>/<field>/` holds safetensors shards (`shard-r<rank>-<n>.safetensors`),
each with `ids` [n] (dataset rows), `offsets` [n + 1] (token offsets; per-example fields use rows) and
the field's tensors, unpadded (only real tokens), plus `meta.json` written last. Shards are memory-
mapped with numpy (never loaded whole); a batch gathers its rows with one fancy index per tensor.
Stored per example, so shuffling, dynamic padding, length grouping, several processes and resume
all work: the trainer passes each batch's dataset rows (`_index`) and attention mask, and the rows
are scattered back to the batch's padded positions.

Key. `<data+teacher key>` hashes the format version, the teacher (xxh3 over its weights as they are
in memory, its config, the stage's `teacher_id` when it sets one, e.g. a custom teacher pass, and
the teacher's own `cache_id` when it has one: a windowed teacher's window, overlap and mode),
and the data (the stage's model-input columns: token ids, masks, type ids, which cover the data, the
tokenizer and the max length); the field name covers what is stored (k, temperature, dtype). Any
change gives another key: a stale entry is never read. A run logs whether it built, extended (added
fields to an existing entry) or reused the cache, and its size on disk.

Filling. Before a stage trains, one pass of the teacher over the stage's data (sorted by length, so
batches carry little padding) computes every missing field; `lmdistill cache CONFIG` runs the same
pass without training (on another machine, or under torchrun: each rank fills its share of the rows,
rank 0 publishes the entry). An entry is written to a temporary folder and renamed into place, under
a file lock, so a killed pass leaves nothing half-written and concurrent runs build it once.

Only stages whose teacher inputs are the same in every epoch can be cached (`StageData.static`; MLM
re-masking is not) and only logits and hidden states are stored (a stage that needs attentions runs
the teacher live); such stages log why they run the teacher live.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xxhash
from safetensors.torch import save_file

from lmdistill import killpoint
from lmdistill.models.features import Features, TopKLogits, batch_mask

logger = logging.getLogger("lmdistill")
FORMAT_VERSION = 1
META = "meta.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
INPUT_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
SHARD_BYTES = 256 << 20  # shards of about 256 MiB


# ---- keys ------------------------------------------------------------------------------------------

def model_fingerprint(model: torch.nn.Module, extra: str | None = None) -> str:
    """xxh3-128 of a model's weights as they are in memory (names, dtypes, shapes, bytes) and its config.

    About 1 GB/s on this machine: a 135M-parameter teacher takes under a second; the value is memoised on
    the module until its parameters change (`_version` counters), so repeated stages pay it once."""
    versions = tuple(p._version for p in model.parameters())
    memo = getattr(model, "_lmdistill_fingerprint", None)
    if memo is not None and memo[0] == versions and memo[1] == extra:
        return memo[2]
    digest = xxhash.xxh3_128()
    config = getattr(model, "config", None)
    if config is not None:
        # Where the weights were loaded from is not what they are: a resumed run that loads the same
        # teacher from another folder (or the same folder under another path) keys the same entry.
        settings = json.loads(config.to_json_string(use_diff=False))
        settings.pop("_name_or_path", None)
        settings.pop("problem_type", None)  # set by transformers on the first forward with labels: not the weights
        digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    if extra:
        digest.update(extra.encode())
    value = digest.hexdigest()
    object.__setattr__(model, "_lmdistill_fingerprint", (versions, extra, value))
    return value


def data_fingerprint(dataset) -> str:
    """xxh3-128 of a tokenized dataset's model-input columns (not its labels), in row order."""
    import pyarrow as pa

    table = dataset.with_format("arrow")[:]
    columns = [c for c in INPUT_COLUMNS if c in table.column_names]
    digest = xxhash.xxh3_128()
    digest.update(f"{len(table)}:{','.join(columns)}".encode())
    sink = pa.BufferOutputStream()
    subset = table.select(columns).combine_chunks()
    with pa.ipc.new_stream(sink, subset.schema) as writer:
        writer.write_table(subset)
    digest.update(memoryview(sink.getvalue()))
    return digest.hexdigest()


def field_names(needs, logits_kind: str, top_k: int, dtype: str) -> list[str]:
    """The cache fields a stage's teacher needs: logits (all, or top-k for a vocabulary) and hidden layers."""
    fields = []
    if needs.logits:
        fields.append(f"topk{top_k}-T{needs.temperature:g}-{dtype}" if logits_kind == "vocabulary" else f"logits-{dtype}")
    if needs.hidden_states == "all":
        raise ValueError("a cached teacher stores declared layers only; give Needs(hidden_states=(...)) explicitly")
    fields += [f"hidden{i}-{dtype}" for i in needs.hidden_states]
    return fields


# ---- memory-mapped safetensors ---------------------------------------------------------------------

_NUMPY = {"F16": np.float16, "F32": np.float32, "BF16": np.uint16, "I64": np.int64, "I32": np.int32}
_TORCH_VIEW = {"BF16": torch.bfloat16}


def mmap_safetensors(path: Path) -> dict[str, tuple[np.ndarray, str]]:
    """{name: (numpy memmap, safetensors dtype)} of a safetensors file, without reading the data."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    arrays = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = _NUMPY[info["dtype"]]
        count = (end - begin) // np.dtype(dtype).itemsize
        array = np.memmap(path, dtype=dtype, mode="r", offset=8 + size + begin, shape=(count,))
        arrays[name] = (array.reshape(info["shape"]) if count else np.zeros(info["shape"], dtype)), info["dtype"]
    return arrays


def _to_torch(array: np.ndarray, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.view(_TORCH_VIEW[dtype]) if dtype in _TORCH_VIEW else tensor


# ---- one field on disk -----------------------------------------------------------------------------

class FieldReader:
    """Rows of one cached field, gathered for a batch of dataset rows."""

    def __init__(self, folder: Path):
        self.meta = json.loads((folder / META).read_text())
        self.per_token = self.meta["kind"] == "token"
        shards = [mmap_safetensors(p) for p in sorted(folder.glob("shard-*.safetensors"))]
        count = self.meta["rows"]
        # Where each dataset row lives: shard number and [start, end) in that shard's tensors.
        self.shard_of = np.full(count, -1, dtype=np.int64)
        self.start = np.zeros(count, dtype=np.int64)
        self.end = np.zeros(count, dtype=np.int64)
        self.shards = []
        for number, arrays in enumerate(shards):
            ids = np.asarray(arrays.pop("ids")[0])
            offsets = np.asarray(arrays.pop("offsets")[0])
            self.shard_of[ids] = number
            self.start[ids] = offsets[:-1]
            self.end[ids] = offsets[1:]
            self.shards.append(arrays)
        if (self.shard_of < 0).any():
            missing = int((self.shard_of < 0).sum())
            raise RuntimeError(f"teacher-output cache {folder}: {missing} rows missing; delete the folder to rebuild")

    def gather(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """{tensor name: rows concatenated in the given order} (per-token fields: tokens of each row)."""
        out: dict[str, list[torch.Tensor]] = {}
        shard_of = self.shard_of[rows]
        # Usually one shard: one fancy index per tensor for the whole batch.
        for number in np.unique(shard_of):
            pick = rows[shard_of == number]
            spans = [np.arange(s, e) for s, e in zip(self.start[pick], self.end[pick])]
            index = np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)
            for name, (array, dtype) in self.shards[number].items():
                out.setdefault(name, []).append((_to_torch(array[index], dtype), pick))
        result = {}
        for name, parts in out.items():
            if len(parts) == 1:
                result[name] = parts[0][0]
                continue
            # Rows from several shards: put them back in the batch's order.
            order = {int(r): i for i, r in enumerate(rows)}
            pieces = []
            for tensor, pick in parts:
                sizes = (self.end[pick] - self.start[pick]).tolist()
                for row, piece in zip(pick, torch.split(tensor, sizes)):
                    pieces.append((order[int(row)], piece))
            result[name] = torch.cat([piece for _, piece in sorted(pieces, key=lambda x: x[0])])
        return result

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        return self.end[rows] - self.start[rows]


class ShardWriter:
    """Collects one field's rows (in any order) and writes them as safetensors shards."""

    def __init__(self, folder: Path, rank: int):
        self.folder, self.rank = folder, rank
        self.ids: list[int] = []
        self.parts: dict[str, list[torch.Tensor]] = {}
        self.lengths: list[int] = []
        self.bytes = 0
        self.shards = 0

    def add(self, row: int, tensors: dict[str, torch.Tensor], length: int) -> None:
        self.ids.append(row)
        self.lengths.append(length)
        for name, tensor in tensors.items():
            self.parts.setdefault(name, []).append(tensor)
            self.bytes += tensor.numel() * tensor.element_size()
        if self.bytes >= SHARD_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.ids:
            return
        offsets = torch.zeros(len(self.lengths) + 1, dtype=torch.int64)
        offsets[1:] = torch.tensor(self.lengths, dtype=torch.int64).cumsum(0)
        tensors = {name: torch.cat(parts).contiguous() for name, parts in self.parts.items()}
        tensors["ids"] = torch.tensor(self.ids, dtype=torch.int64)
        tensors["offsets"] = offsets
        save_file(tensors, str(self.folder / f"shard-r{self.rank}-{self.shards:05d}.safetensors"))
        self.shards += 1
        self.ids, self.parts, self.lengths, self.bytes = [], {}, [], 0


# ---- the cache of one stage ------------------------------------------------------------------------

@dataclass
class CacheInfo:
    status: str  # built | extended | reused
    folder: Path
    fields: list[str]
    size_mb: float
    build_s: float = 0.0

    def as_dict(self) -> dict:
        return {"status": self.status, "folder": str(self.folder), "fields": self.fields,
                "size_mb": round(self.size_mb, 1), "build_s": round(self.build_s, 1)}


class CachedTeacherOutputs:
    """Reads a stage's teacher Features from the cache: `features(index, batch)` -> Features on the
    batch's device, padded like the batch (per-token rows scattered to its real positions)."""

    def __init__(self, folder: Path, fields: list[str], num_layers: int, info: CacheInfo):
        self.folder = folder
        self.fields = fields
        self.num_layers = num_layers
        self.info = info
        self.readers = {name: FieldReader(folder / name) for name in fields}

    def features(self, index: torch.Tensor | None, batch: dict) -> Features:
        if index is None:
            raise RuntimeError("teacher-output cache: the batch has no dataset rows (_index)")
        rows = index.cpu().numpy()
        mask = batch_mask(batch)
        device = mask.device
        real = mask.bool()
        lengths = real.sum(-1).cpu().numpy()
        logits, hidden = None, [None] * (self.num_layers + 1)
        for name, reader in self.readers.items():
            if reader.per_token and not np.array_equal(reader.lengths(rows), lengths):
                raise RuntimeError(f"teacher-output cache {self.folder / name}: stored lengths do not match the "
                                   "batch; the cache is stale or corrupt: delete it to rebuild")
            data = reader.gather(rows)
            if name.startswith("topk"):
                logits = TopKLogits(
                    values=_scatter(data["values"], real).to(device),
                    indices=_scatter(data["indices"], real).to(device).long(),
                    tail_lse=_scatter(data["tail_lse"], real, fill=float("-inf")).to(device),
                    temperature=float(reader.meta["temperature"]),
                )
            elif name.startswith("logits"):
                value = data["data"].to(device=device, dtype=torch.float32)
                logits = _scatter(value, real) if reader.per_token else value
            else:
                layer = int(name.removeprefix("hidden").split("-")[0])
                hidden[layer] = _scatter(data["data"].to(device=device, dtype=torch.float32), real)
        has_hidden = any(h is not None for h in hidden)
        return Features(logits=logits, hidden_states=tuple(hidden) if has_hidden else (), attentions=None,
                        mask=mask, task_loss=None)


def _scatter(rows: torch.Tensor, real: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """[T, ...] rows of the real tokens -> [B, L, ...] in the batch's layout (padding = fill)."""
    out = torch.full((*real.shape, *rows.shape[1:]), fill, dtype=rows.dtype, device=real.device)
    out[real] = rows.to(real.device)
    return out


# ---- building --------------------------------------------------------------------------------------

@contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock (fcntl.flock) held while building a cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def logits_kind(logits: torch.Tensor, teacher) -> str:
    """'vocabulary' for LM logits (as wide as the teacher's vocabulary), else 'labels'."""
    vocab = getattr(getattr(teacher, "config", None), "vocab_size", None)
    return "vocabulary" if logits.dim() == 3 and vocab and logits.shape[-1] == vocab else "labels"


def _dist():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def _pass_device() -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def _teacher_device(teacher) -> torch.device:
    try:
        return next(teacher.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def fill_pass(teacher, forward, dataset, collator, needs, fields: list[str], folder: Path, top_k: int,
              dtype: str, batch_size: int, rank: int, world: int, desc: str) -> None:
    """Run the teacher over this rank's share of `dataset` and write `fields` under `folder/<field>`."""
    from tqdm.auto import tqdm

    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    lengths = np.asarray(pc.list_value_length(table.column("input_ids")).to_pylist())
    rows = np.arange(len(dataset))[rank::world]
    rows = rows[np.argsort(-lengths[rows], kind="stable")]  # long first: similar lengths per batch
    columns = [c for c in dataset.column_names if c in INPUT_COLUMNS]
    device = _teacher_device(teacher)
    store = DTYPES[dtype]
    writers = {name: ShardWriter(folder / name, rank) for name in fields}
    for writer in writers.values():
        writer.folder.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, str] = {}
    teacher.eval()
    for begin in tqdm(range(0, len(rows), batch_size), desc=desc, leave=False):
        chunk = rows[begin:begin + batch_size]
        batch = collator([{c: dataset[int(r)][c] for c in columns} for r in chunk])
        batch = {k: v.to(device) for k, v in batch.items() if k in columns}
        features = forward(teacher, batch, needs)
        real = features.mask.bool()
        counts = real.sum(-1).tolist()
        for name in fields:
            if name.startswith(("logits", "topk")):
                per_row = _logit_rows(features.logits, real, name, top_k, needs.temperature, store)
                kinds[name] = "example" if features.logits.dim() == 2 else "token"
            else:
                layer = int(name.removeprefix("hidden").split("-")[0])
                states = features.hidden_states[layer]
                per_row = [{"data": states[b][real[b]].to(store).cpu()} for b in range(len(chunk))]
                kinds[name] = "token"
            for b, row in enumerate(chunk):
                writers[name].add(int(row), per_row[b], counts[b] if kinds[name] == "token" else 1)
        killpoint.hit("cache-batch")
    for name, writer in writers.items():
        writer.flush()
        kinds.setdefault(name, "token" if not name.startswith("logits") else "example")
        (folder / name / f"kind-r{rank}.json").write_text(json.dumps({"kind": kinds[name]}))


def _logit_rows(logits: torch.Tensor, real: torch.Tensor, name: str, top_k: int, temperature: float,
                store: torch.dtype) -> list[dict]:
    if logits.dim() == 2:  # one row of label logits per example
        return [{"data": row.unsqueeze(0).to(store).cpu()} for row in logits]
    rows = []
    for b in range(logits.shape[0]):
        tokens = logits[b][real[b]].float()  # [T, C]
        if name.startswith("logits"):
            rows.append({"data": tokens.to(store).cpu()})
            continue
        scaled = tokens / temperature
        values, indices = tokens.topk(top_k, dim=-1)
        tail = scaled.scatter(-1, indices, float("-inf")).logsumexp(-1)
        rows.append({"values": values.to(store).cpu(), "indices": indices.to(torch.int32).cpu(),
                     "tail_lse": tail.cpu()})
    return rows


def folder_size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def prepare(stage, teacher, dataset, collator, cache_root: Path, top_k: int, dtype: str, batch_size: int,
            top_k_max_temperature: float = 1.0) -> CachedTeacherOutputs | None:
    """The cache reader for a stage, building or extending the entry first when needed.

    Returns None (the teacher then runs live, and the reason is logged) when the stage cannot be
    cached: its data is re-randomised per batch, or it needs attentions."""
    from lmdistill.trainer import network_forward
    from lmdistill.models.features import features_from_output

    needs = stage.teacher_needs
    if needs is None or teacher is None:
        return None
    if needs.attentions:
        logger.info("stage %s: the teacher runs live (the cache stores no attentions)", stage.name)
        return None
    if not stage.cache_teacher:
        logger.info("stage %s: the teacher runs live (the stage reads outputs the cache does not store)", stage.name)
        return None
    if stage.data is not None and not stage.data.static:
        logger.info("stage %s: the teacher runs live (its inputs change every epoch)", stage.name)
        return None
    if stage.teacher_forward is not None:
        forward = stage.teacher_forward
    else:
        def forward(net, batch, wanted):
            return features_from_output(network_forward(net, batch, wanted), batch)

    start = time.time()
    key = xxhash.xxh3_128(json.dumps({
        "format": FORMAT_VERSION,
        # A wrapped teacher (models/windowed.py) names its settings in `cache_id`: the same weights read
        # in other windows give other outputs.
        "teacher": model_fingerprint(teacher, "|".join(
            part for part in (stage.teacher_id, getattr(teacher, "cache_id", None)) if part) or None),
        "data": data_fingerprint(dataset),
    }, sort_keys=True).encode()).hexdigest()[:20]
    entry = cache_root / "outputs" / key
    # The logits' kind (label set or vocabulary) is known from one forward pass on one example.
    probe_needs = type(needs)(logits=needs.logits, temperature=needs.temperature)
    kind = "labels"
    if needs.logits:
        columns = [c for c in dataset.column_names if c in INPUT_COLUMNS]
        device = _teacher_device(teacher)
        with torch.no_grad():
            probe = collator([{c: dataset[0][c] for c in columns}])
            probe = {k: v.to(device) for k, v in probe.items() if k in columns}
            kind = logits_kind(forward(teacher, probe, probe_needs).logits, teacher)
    if kind == "vocabulary" and needs.temperature > top_k_max_temperature:
        logger.info("stage %s: the teacher runs live (its vocabulary logits are read at temperature %g, above "
                    "training.cache_top_k_max_temperature %g, where a top-%d cache would drop most of the KL)",
                    stage.name, needs.temperature, top_k_max_temperature, top_k)
        return None
    fields = field_names(needs, kind, top_k, dtype)
    dist, rank, world = _dist()
    missing = [f for f in fields if not (entry / f / META).is_file()]
    status = "reused"
    if missing:
        status = "built" if len(missing) == len(fields) and not any(entry.glob("*/" + META)) else "extended"
        lock = file_lock(entry.parent / f"{key}.lock") if rank == 0 else _no_lock()
        with lock:
            missing = [f for f in fields if not (entry / f / META).is_file()]  # another run may have built them
            if missing:
                _build(teacher, forward, dataset, collator, needs, missing, entry, top_k, dtype, batch_size, rank,
                       world, dist, f"teacher pass ({stage.name})")
            if dist is not None:
                dist.barrier()
    else:
        if rank == 0 and any(entry.glob(".tmp-*")):
            # The staging folder of a pass killed after publishing its last field. A builder holds the
            # lock while its own staging folder exists, so under the lock every .tmp- folder is stale.
            with file_lock(entry.parent / f"{key}.lock"):
                for stale in entry.glob(".tmp-*"):
                    shutil.rmtree(stale, ignore_errors=True)
        if dist is not None:
            dist.barrier()
    info = CacheInfo(status, entry, fields, folder_size_mb(entry), time.time() - start)
    logger.info("stage %s: teacher-output cache %s (%s; %.1f MB on disk, %s) in %.1f s", stage.name, status,
                ", ".join(fields), info.size_mb, entry, info.build_s)
    return CachedTeacherOutputs(entry, fields, teacher.config.num_hidden_layers, info)


@contextmanager
def _no_lock():
    yield


def _build(teacher, forward, dataset, collator, needs, fields, entry: Path, top_k, dtype, batch_size, rank, world,
           dist, desc) -> None:
    """Fill `fields` into a temporary folder beside the entry, then publish each field by renaming."""
    entry.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        for stale in entry.glob(".tmp-*"):  # of a killed pass; this run holds the lock
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry))
        names = [str(staging)]
    else:
        names = [None]
    if dist is not None:
        dist.broadcast_object_list(names, src=0)
    staging = Path(names[0])
    home = _teacher_device(teacher)
    try:
        # The pass runs on this process's accelerator when there is one; the teacher goes back where it
        # was afterwards, so the training device holds only the student (the teacher may not fit there).
        teacher.to(_pass_device())
        fill_pass(teacher, forward, dataset, collator, needs, fields, staging, top_k, dtype, batch_size, rank, world,
                  desc)
        teacher.to(home)
        if home.type == "cpu" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        if dist is not None:
            dist.barrier()
        if rank == 0:
            for name in fields:
                folder = staging / name
                kinds = {json.loads(p.read_text())["kind"] for p in folder.glob("kind-r*.json")}
                meta = {"format": FORMAT_VERSION, "field": name, "kind": kinds.pop() if kinds else "token",
                        "rows": len(dataset), "dtype": dtype, "temperature": needs.temperature,
                        "top_k": top_k, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
                (folder / META).write_text(json.dumps(meta, indent=2))
                target = entry / name
                if target.exists():
                    shutil.rmtree(target)  # an unpublished leftover (no meta.json) of a killed pass
                os.replace(folder, target)
                killpoint.hit("cache-publish")
    finally:
        if rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
