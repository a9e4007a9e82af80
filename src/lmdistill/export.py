"""Export a saved model folder to ONNX for deployment, and run an exported folder with onnxruntime.

Exporter: `torch.onnx.export(..., dynamo=True)`, the torch.export-based exporter (it needs
`onnxscript`). Checked with torch 2.13 / transformers 5.23 on BERT-family sequence classification,
token classification and QA heads and on Llama causal LMs: outputs equal PyTorch's to ~1e-7.
The alternatives do not do the job here: optimum's ONNX exporter (optimum-onnx) requires
transformers < 4.58, and the legacy TorchScript exporter (`dynamo=False`) is deprecated, fails on the
QA head and gives wrong token-classification logits once padding differs from the traced example.

An export folder holds everything needed to run the model with onnxruntime and a tokenizer:

    model.onnx        the graph; inputs [batch, sequence] int64, outputs as the HF head's
                      (logits, or start_logits and end_logits), both axes dynamic
    config.json       the model's config (id2label, ...), tokenizer files
    export.json       how it was made (exporter, opset, inputs, outputs, quantization) and the
                      check against PyTorch made at export time; also marks the folder as ours

`--quantize int8` applies onnxruntime's dynamic quantization (int8 weights of MatMul/Gemm,
activations quantized per batch at run time) to the exported graph.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import types
import warnings
from pathlib import Path

import numpy as np
import torch
import transformers

from lmdistill.bench import count_parameters
from lmdistill.errors import ConfigError, LmdistillError
from lmdistill.io_utils import atomic_dir, atomic_write_json

logger = logging.getLogger("lmdistill")

FORMATS = ("onnx",)
QUANTIZATIONS = ("int8",)
MARKER = "export.json"
MODEL_FILE = "model.onnx"
FP32_TOLERANCE = 1e-4  # max |onnx - pytorch| on logits, fp32; measured ~1e-6 on MiniLM
# Heads we export, by the suffix of the architecture's class name: (Auto class, output names).
HEADS = {
    "ForSequenceClassification": ("AutoModelForSequenceClassification", ("logits",)),
    "ForTokenClassification": ("AutoModelForTokenClassification", ("logits",)),
    "ForQuestionAnswering": ("AutoModelForQuestionAnswering", ("start_logits", "end_logits")),
    "ForCausalLM": ("AutoModelForCausalLM", ("logits",)),
    "ForMaskedLM": ("AutoModelForMaskedLM", ("logits",)),
}
# Real sentences for the export-time check (different lengths, so padding is exercised).
CHECK_TEXTS = [
    "a gripping, beautifully acted film .",
    "the plot goes nowhere and the jokes fall flat , which is a pity given the cast .",
    "Paris is the capital of France.",
    "it 's a charming and often affecting journey .",
]


def _head_of(config) -> tuple[str, tuple[str, ...]]:
    architectures = [str(a) for a in (getattr(config, "architectures", None) or [])]
    for arch in architectures:
        for suffix, head in HEADS.items():
            if arch.endswith(suffix):
                return head
    raise ConfigError(
        f"MODEL: architectures {architectures or 'unknown'} has no task head that export knows "
        f"({', '.join('*' + s for s in HEADS)}); export a trained student folder"
    )


def check_model_folder(folder: str | Path) -> Path:
    """A local folder with config.json, weights and a tokenizer; else one clear ConfigError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"MODEL: {folder} is not a folder")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"MODEL: {folder} is not a model folder (no config.json)")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ConfigError(f"MODEL: {folder} holds no weights (*.safetensors)")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        raise ConfigError(f"MODEL: {folder} holds no tokenizer; an export must carry one to be usable")
    return folder


def check_onnx_dependencies(key: str, exporter: bool = False) -> None:
    """onnxruntime (and, to export, onnx + onnxscript) are the optional 'export' extra."""
    modules = ("onnxruntime", "onnx", "onnxscript") if exporter else ("onnxruntime",)
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(f"{key}: needs the package {module}: pip install 'lmdistill[export]'") from None


def is_export_folder(folder: str | Path) -> bool:
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("made_by") == "lmdistill export"
    except (OSError, ValueError):
        return False


def check_out_folder(out: Path, overwrite: bool) -> None:
    """Same rules as `run`: an existing non-empty folder needs --overwrite, and --overwrite only
    replaces a folder that an earlier export made (never a folder that is not ours)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"--out: {out} already exists; pass --overwrite to replace an earlier export")
    if not is_export_folder(out):
        raise ConfigError(f"--out: {out} is not an lmdistill export folder (no {MARKER}); "
                          "refusing to overwrite it, choose another --out")


def _shareable(folder: Path) -> None:
    """Temporary files and folders are created private (0600/0700); a deployment folder is read by
    others, so it gets the modes a plain mkdir / open would have given (umask applies)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


class _Positional(torch.nn.Module):
    """The HF model as a function of positional tensors returning a tuple (what the exporter wants)."""

    def __init__(self, model, input_names, output_names):
        super().__init__()
        self.model, self.input_names, self.output_names = model, list(input_names), list(output_names)
        self.extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}

    def forward(self, *inputs):
        output = self.model(**dict(zip(self.input_names, inputs)), **self.extra, return_dict=True)
        return tuple(output[name] for name in self.output_names)


def input_names_of(model, tokenizer) -> list[str]:
    """What the tokenizer produces and the model's forward accepts, e.g. input_ids,
    token_type_ids, attention_mask for BERT; input_ids, attention_mask for Llama."""
    accepted = inspect.signature(model.forward).parameters
    names = [n for n in tokenizer.model_input_names if n in accepted]
    if "input_ids" not in names:
        names.insert(0, "input_ids")
    return names


def _check_inputs(tokenizer, names: list[str], texts: list[str]) -> dict[str, np.ndarray]:
    encoded = tokenizer(texts, padding=True, return_tensors="np")
    feed = {}
    for name in names:
        feed[name] = np.asarray(encoded[name], dtype=np.int64) if name in encoded else (
            np.zeros_like(np.asarray(encoded["input_ids"]), dtype=np.int64))
    return feed


def export_onnx(model_dir: str | Path, out: str | Path, quantize: str | None = None, overwrite: bool = False,
                fmt: str = "onnx") -> dict:
    """Export `model_dir` (a saved HF model folder with a task head) to `out`. Returns export.json's content.

    Everything is checked before anything is written; the folder is written to a temporary
    name and renamed into place.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown format '{fmt}' (supported: {', '.join(FORMATS)})")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(f"--quantize: unknown quantization '{quantize}' (supported: {', '.join(QUANTIZATIONS)})")
    model_dir, out = check_model_folder(model_dir), Path(out)
    if out.resolve() == model_dir.resolve() or model_dir.resolve() in out.resolve().parents:
        raise ConfigError(f"--out: {out} is inside the model folder {model_dir}; choose another folder")
    check_out_folder(out, overwrite)
    check_onnx_dependencies("--format onnx", exporter=True)

    from lmdistill.models.teacher import load_tokenizer

    config = transformers.AutoConfig.from_pretrained(model_dir)
    auto_name, output_names = _head_of(config)
    tokenizer = load_tokenizer(str(model_dir), "MODEL")
    try:
        model, loading = getattr(transformers, auto_name).from_pretrained(model_dir, dtype=torch.float32,
                                                                           output_loading_info=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"MODEL: cannot load {model_dir} as {auto_name}: {str(err).splitlines()[0]}") from None
    missing = list(loading.get("missing_keys", []))
    if missing:  # transformers would fill them with random values: an export of an untrained head
        raise ConfigError(f"MODEL: {model_dir} lacks {len(missing)} weights of its {auto_name} head "
                          f"(e.g. {missing[0]}); export a trained model folder")
    model.eval()
    input_names = input_names_of(model, tokenizer)

    # Their INFO logs are one line per graph pass; torch.onnx warns that torchvision's ops are absent.
    for name, level in (("onnx_ir", logging.WARNING), ("onnxscript", logging.WARNING), ("torch.onnx", logging.ERROR)):
        logging.getLogger(name).setLevel(level)
    with atomic_dir(out) as tmp:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = _export(model, tokenizer, input_names, output_names, tmp)
        if quantize == "int8":
            info["quantization"] = _quantize_int8(tmp / MODEL_FILE)
        info["check"] = verify(tmp, model, tokenizer)
        info.update({"made_by": "lmdistill export", "source": str(model_dir.resolve()), "auto_class": auto_name,
                     "format": fmt, "quantize": quantize, "params": count_parameters(model)})
        atomic_write_json(tmp / MARKER, info)
        _shareable(tmp)
    _log_check(info)
    return info


def _export(model, tokenizer, input_names, output_names, folder: Path) -> dict:
    """torch.onnx (dynamo) export with dynamic batch and sequence axes."""
    example = _check_inputs(tokenizer, input_names, CHECK_TEXTS[:2])  # 2 rows: batch is not specialised to 1
    args = tuple(torch.from_numpy(example[n]) for n in input_names)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=int(max_positions)) if max_positions else torch.export.Dim("sequence")
    dynamic = tuple({0: batch, 1: sequence} for _ in input_names)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own notes on axis names and deprecations
        try:
            program = torch.onnx.export(
                _Positional(model, input_names, output_names).eval(), args, dynamo=True,
                input_names=input_names, output_names=list(output_names), dynamic_shapes={"inputs": dynamic},
                optimize=True, verbose=False,
            )
        except Exception as err:  # the exporter's errors are long; the first line says what failed
            cause = err
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise LmdistillError(
                f"MODEL: torch.onnx could not export {type(model).__name__}: {type(cause).__name__}: "
                f"{(str(cause).strip().splitlines() or [''])[0]}"
            ) from None
        # One file when it fits ONNX's 2 GB protobuf limit; else weights go to model.onnx.data.
        program.save(str(folder / MODEL_FILE), external_data=weight_bytes > 1.5 * 2**30)
    opset = {d.domain or "ai.onnx": d.version for d in program.model_proto.opset_import}
    return {
        "exporter": f"torch.onnx (dynamo) {torch.__version__}",
        "opset": opset.get("ai.onnx") or opset.get(""),
        "inputs": input_names,
        "outputs": list(output_names),
        "dynamic_axes": {"0": "batch", "1": "sequence"},
        "max_sequence": int(max_positions) if max_positions else None,
    }


def _quantize_int8(path: Path) -> dict:
    """onnxruntime dynamic quantization in place: int8 weights (per tensor, signed), activations
    quantized per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = path.with_name("model.fp32.onnx")
    path.rename(fp32)
    # onnxruntime advises its pre-processing (shape inference + graph optimisation) first; on the
    # MiniLM export its symbolic shape inference fails, and the rest of it (skip_symbolic_shape)
    # made the int8 model no faster there.
    advice = _DropMessage("Please consider to run pre-processing")
    logging.getLogger().addFilter(advice)
    try:
        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().removeFilter(advice)
    fp32.unlink()
    return {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
            "per_channel": False, "op_types": "onnxruntime's defaults (MatMul and Gather weights among them)"}


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def verify(folder: Path, model, tokenizer) -> dict:
    """Run the exported graph and the PyTorch model on real sentences at a batch size and lengths
    other than the export example's. Returns the max |diff| per output and the argmax agreement."""
    onnx_model = OnnxModel(folder)
    feed = _check_inputs(tokenizer, onnx_model.input_names, CHECK_TEXTS)
    with torch.inference_mode():
        reference = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
        got = onnx_model(**{k: torch.from_numpy(v) for k, v in feed.items()})
    mask = feed.get("attention_mask", np.ones_like(feed["input_ids"])).astype(bool)
    check = {"rows": int(feed["input_ids"].shape[0]), "max_abs_diff": {}, "argmax_agreement": {}}
    for name in onnx_model.output_names:
        ref, out = reference[name].float().numpy(), getattr(got, name).numpy()
        if ref.ndim == 3:  # per-token logits [B, L, C]: padded positions are free to differ
            ref, out = ref[mask], out[mask]
        elif ref.shape == mask.shape:  # QA start/end logits [B, L]: the argmax is over real tokens
            ref, out = np.where(mask, ref, -np.inf), np.where(mask, out, -np.inf)
        real = np.isfinite(ref)
        check["max_abs_diff"][name] = float(np.abs(ref[real] - out[real]).max())
        check["argmax_agreement"][name] = float((ref.argmax(-1) == out.argmax(-1)).mean())
    return check


def _log_check(info: dict) -> None:
    worst = max(info["check"]["max_abs_diff"].values())
    logger.info("exported (%s, opset %s%s): max |onnx - pytorch| = %.2e on %d real rows",
                info["exporter"], info["opset"], ", int8" if info.get("quantize") else "", worst,
                info["check"]["rows"])
    if info.get("quantize") is None and worst > FP32_TOLERANCE:
        logger.warning("the exported model differs from PyTorch by %.2e (> %.0e): check export.json", worst,
                       FP32_TOLERANCE)


class OnnxModel:
    """An export folder run by onnxruntime, callable like the HF model it came from.

    `model(**batch)` takes torch tensors [batch, sequence] and returns an object with the head's
    outputs (`.logits`, or `.start_logits` / `.end_logits`) as CPU float tensors. Inputs the graph
    has but the batch lacks (token_type_ids) are zeros, as in the HF model.
    """

    device = torch.device("cpu")
    training = False

    def __init__(self, folder: str | Path, threads: int | None = None):
        import onnxruntime as ort

        self.folder = Path(folder)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.folder / MODEL_FILE), options,
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.config = transformers.AutoConfig.from_pretrained(self.folder)
        marker = self.folder / MARKER
        self.info = json.loads(marker.read_text()) if marker.is_file() else {}

    def __call__(self, **batch):
        ids = batch["input_ids"]
        feed = {}
        for name in self.input_names:
            value = batch.get(name)
            feed[name] = np.zeros(tuple(ids.shape), dtype=np.int64) if value is None else (
                value.detach().cpu().numpy().astype(np.int64, copy=False))
        outputs = self.session.run(self.output_names, feed)
        return types.SimpleNamespace(**{n: torch.from_numpy(o) for n, o in zip(self.output_names, outputs)})

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def num_parameters(self) -> int:
        """The exported PyTorch model's parameter count (the graph's initializers differ: the
        exporter merges equal constants, quantization adds scales)."""
        return int(self.info.get("params", 0))


def is_onnx_folder(folder: str | Path) -> bool:
    return (Path(folder) / MODEL_FILE).is_file()

