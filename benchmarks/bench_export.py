"""PyTorch vs ONNX fp32 vs ONNX int8: latency, size, peak memory and agreement, on SST-2 dev.

The model: a 3-layer layer subset ([0, 2, 4]) of the packaged MiniLM-L6 with a random 2-label
head (seed 0). Latency is a property of the architecture, not of the head's training, so an
untrained head measures the same thing as a distilled student of that shape, without training one.
Because the head is random, the task accuracy means nothing here; what is reported instead is how
often each ONNX model predicts the class PyTorch predicts, and the largest logit difference, over
all 872 SST-2 dev sentences.

    .venv/bin/python benchmarks/bench_export.py            # ~5 min on 2 cores; writes results/export-sst2.{json,md}
    .venv/bin/python benchmarks/bench_export.py --table-only   # the table from the stored JSON

Measurement: `lmdistill.bench.compare_latency` (the code `run` and `eval` use): the three models
alternate within each of R rounds on the same real inputs (SST-2 dev sentences cut or extended to
the median dev length), each figure the median over rounds of the per-round median; batch 1 and
32, 2 threads for torch and for onnxruntime (intra-op). Peak memory: `bench.peak_memory_mb`, a
fresh process per model, load + one batch-32 forward.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from lmdistill import bench  # noqa: E402
from lmdistill.config import load_config  # noqa: E402
from lmdistill.export import OnnxModel, export_onnx  # noqa: E402
from lmdistill.models.students import layer_subset  # noqa: E402
from lmdistill.models.teacher import SHORTCUTS, _package_dir  # noqa: E402
from lmdistill.tasks import build_task  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def build_student(folder: Path) -> None:
    source = _package_dir(SHORTCUTS["minilm"][0]) / "model"
    torch.manual_seed(0)
    full = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=2, id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1}, dtype=torch.float32)
    student = layer_subset(full, [0, 2, 4]).eval()
    if folder.exists():
        shutil.rmtree(folder)
    student.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(REPO / "runs" / "bench-export"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--eval-samples", type=int, default=None, help="fewer dev sentences (a quick check)")
    parser.add_argument("--out", default=str(RESULTS / "export-sst2.json"))
    parser.add_argument("--markdown", default=str(RESULTS / "export-sst2.md"), help="also write the table here")
    parser.add_argument("--table-only", action="store_true", help="print the table of --out; run nothing")
    args = parser.parse_args()
    if args.table_only:
        print(table(json.loads(Path(args.out).read_text())))
        return
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    config = load_config({
        "teacher": {"path": "minilm"}, "student": {"layers": [0, 2, 4]}, "recipe": {"name": "kd"},
        "task": {"kind": "classification", "train": str(REPO / "data/sst2/train.tsv"),
                 "eval": str(REPO / "data/sst2/dev.tsv"), "text": "sentence", "label": "label",
                 "max_length": 64, "max_eval_samples": args.eval_samples},
        "output": str(work / "unused"),
    })
    task = build_task(config.task, config.search_dirs)

    student_dir = work / "student"
    build_student(student_dir)
    export_s = {}
    for name, quantize in (("onnx-fp32", None), ("onnx-int8", "int8")):
        start = time.perf_counter()
        export_onnx(student_dir, work / name, quantize=quantize, overwrite=True)
        export_s[name] = round(time.perf_counter() - start, 1)

    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    pytorch = AutoModelForSequenceClassification.from_pretrained(student_dir).eval()
    task.bind(pytorch.config)
    models = {"pytorch": (pytorch, student_dir, task.auto_class()),
              "onnx-fp32": (OnnxModel(work / "onnx-fp32", args.threads), work / "onnx-fp32", "onnx"),
              "onnx-int8": (OnnxModel(work / "onnx-int8", args.threads), work / "onnx-int8", "onnx")}

    # Agreement with PyTorch over the dev set, through the task's own prediction loop.
    logits = {name: np.concatenate(task.predict(model, tokenizer, 64, desc=name)[0]) for name, (model, _, _) in
              models.items()}
    seq_len = task.typical_length(tokenizer, pytorch.config)
    make_batch = lambda size, length: task.bench_batch(tokenizer, size, length, pytorch.config)  # noqa: E731
    latency = bench.compare_latency({name: (model, make_batch) for name, (model, _, _) in models.items()},
                                    [1, 32], seq_len, args.repeats, 3, args.threads, args.rounds)
    rows = {}
    for name, (model, folder, kind) in models.items():
        rows[name] = {
            "latency_ms": latency[name],
            "size_mb": round(bench.folder_size_mb(folder), 1),
            "peak_mem_mb": round(bench.peak_memory_mb(folder, kind, make_batch(32, seq_len), args.threads) or 0, 1),
            "agreement_with_pytorch": float((logits[name].argmax(-1) == logits["pytorch"].argmax(-1)).mean()),
            "max_abs_logit_diff": float(np.abs(logits[name] - logits["pytorch"]).max()),
            "export_s": export_s.get(name),
        }
    result = {"model": "MiniLM-L6 layers [0, 2, 4] + random 2-label head (17.4M parameters)",
              "data": f"SST-2 dev, {len(logits['pytorch'])} sentences", "seq_len": seq_len,
              "threads": args.threads, "rounds": args.rounds, "repeats": args.repeats,
              "versions": {"torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__},
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    Path(args.markdown).write_text(table(result) + "\n")
    print(table(result))


def table(result: dict) -> str:
    base = result["rows"]["pytorch"]["latency_ms"]
    lines = ["| model | latency b=1 (ms) | latency b=32 (ms) | speed-up b=1 / b=32 | size (MB) | peak mem (MB) "
             "| agrees with PyTorch | max abs logit diff |", "|---|---|---|---|---|---|---|---|"]
    for name, row in result["rows"].items():
        lat = row["latency_ms"]
        lines.append(
            f"| {name} | {lat['batch1']:.2f} | {lat['batch32']:.1f} | {base['batch1'] / lat['batch1']:.2f}x / "
            f"{base['batch32'] / lat['batch32']:.2f}x | {row['size_mb']} | {row['peak_mem_mb']} | "
            f"{row['agreement_with_pytorch']:.4f} | {row['max_abs_logit_diff']:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
