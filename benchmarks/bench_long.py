"""Efficient-attention students on long documents (issue 12): cost against length, long NER and QA,
and what the conversion costs on short tasks.

Subcommands (results: benchmarks/results/long/<key>.json; tables from those files only):

    python benchmarks/bench_long.py cost                 # latency + peak memory at 512..4096 tokens
    python benchmarks/bench_long.py ner                  # LitBank whole-document NER (fold 0)
    python benchmarks/bench_long.py qa                   # COVID-QA (split by document)
    python benchmarks/bench_long.py short                # WikiANN and the SQuAD slice
    python benchmarks/bench_long.py table --markdown benchmarks/results/long.md

Models (all from the packaged MiniLM-L6 teacher, 6 layers, 384 wide, 512 positions):
  teacher            MiniLM-L6 fine-tuned on the task by lmdistill; on long inputs it reads 512-token
                     windows (stride `--stride`), merged per word (NER) or per span (QA)
  full               3 of its layers ([0, 2, 4]), full attention, 512 positions: reads windows like the teacher
  full-4096          the same with positions extended to 4,096 by copying (cost curve only)
  longformer         3 layers, Longformer, window 256, global [CLS] (QA: the question), 4,096 positions
  bigbird            3 layers, BigBird block-sparse, block 64, 3 random blocks, 4,096 positions
  nystromformer      3 layers, Nystromformer, 64 landmarks, inputs padded to 4,096
  lsg                3 layers, LSG (ours), blocks of 128, sparse factor 4, 1 sparse block each side, global [CLS]
Efficient students read a whole document (up to 4,096 tokens) in one pass.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
RESULTS = REPO / "benchmarks" / "results" / "long"
WORK = REPO / "runs" / "bench-long"
LAYERS = [0, 2, 4]
MAX_LENGTH = 4096
ATTENTION = {
    "longformer": {"type": "longformer", "window": 256},
    "bigbird": {"type": "bigbird", "block_size": 64, "num_random_blocks": 3},
    "nystromformer": {"type": "nystromformer", "num_landmarks": 64},
    "lsg": {"type": "lsg", "block_size": 128, "sparse_factor": 4, "sparse_blocks": 1},
}


def minilm_bert(layers: list[int] | None = None, num_labels: int = 13):
    """The packaged MiniLM-L6 as BertForTokenClassification (a new head: weights do not matter for cost)."""
    import torch
    from transformers import BertForTokenClassification

    from lmdistill.config import TeacherConfig
    from lmdistill.models.students import layer_subset
    from lmdistill.models.teacher import default_cache_dir, resolve_teacher

    source = resolve_teacher(TeacherConfig(path="minilm"), default_cache_dir())
    torch.manual_seed(0)
    model = BertForTokenClassification.from_pretrained(source, num_labels=num_labels, dtype=torch.float32)
    return (layer_subset(model, layers) if layers else model).eval(), source


def real_ids(tokenizer, length: int):
    """`length` real WordPiece ids: the repo's LitBank documents one after another, [CLS] ... [SEP]."""
    import torch

    from lmdistill.tasks.io import load_split

    words = [w for split in ("train", "test") for doc in load_split(str(REPO / "data/litbank" / split), "x")["tokens"]
             for w in doc]
    ids = tokenizer(" ".join(words[: length * 2]), add_special_tokens=False)["input_ids"][: length - 2]
    ids = [tokenizer.cls_token_id] + ids + [tokenizer.sep_token_id]
    input_ids = torch.tensor([ids])
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def cost(args) -> None:
    """Latency and peak memory of one forward pass (batch 1) at each length; see lmdistill/cost.py."""
    import torch
    from transformers import AutoTokenizer

    from lmdistill import cost as cost_lib
    from lmdistill.config import AttentionConfig
    from lmdistill.models import efficient

    teacher, source = minilm_bert()
    tokenizer = AutoTokenizer.from_pretrained(source)
    student = minilm_bert(LAYERS)[0]
    longest = max(args.lengths)

    def convert(model, attention):
        config = AttentionConfig(**{**attention, "max_length": longest})
        return efficient.convert(model, efficient.check_conversion(config, model), config.type, tokenizer).eval()

    full_teacher = convert(teacher, {"type": "full"})
    full_student = convert(student, {"type": "full"})
    models = [
        cost_lib.CostModel("teacher L6, full (sdpa)", full_teacher, "sdpa"),
        cost_lib.CostModel("teacher L6, full (eager)", full_teacher, "eager"),
        cost_lib.CostModel("student L3, full (sdpa)", full_student, "sdpa"),
        cost_lib.CostModel("student L3, full (eager)", full_student, "eager"),
    ]
    for name in args.students:
        models.append(cost_lib.CostModel(f"student L3, {name}", convert(student, ATTENTION[name])))
    threads = args.threads or torch.get_num_threads()
    start = time.time()
    rows = cost_lib.measure(models, args.lengths, lambda n: real_ids(tokenizer, n), threads, args.repeats,
                            args.rounds, memory=not args.no_memory)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, {threads} threads"
    record = {"key": f"cost{args.tag}", "device": device, "wall_s": round(time.time() - start, 1),
              "settings": {"lengths": args.lengths, "repeats": args.repeats, "rounds": args.rounds,
                           "attention": {k: ATTENTION[k] for k in args.students}, "layers": LAYERS},
              "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"cost{args.tag}.json").write_text(json.dumps(record, indent=1))
    paths = cost_lib.write(rows, RESULTS / f"cost{args.tag}", reference="student L3, full (eager)",
                           title=f"MiniLM teacher and 3-layer students, batch 1 ({device})")
    print(paths["md"].read_text())
    print(cost_lib.ratios(rows, "student L3, full (sdpa)"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("cost", help="latency and peak memory against sequence length")
    p.add_argument("--lengths", nargs="+", type=int, default=[512, 1024, 2048, 4096])
    p.add_argument("--students", nargs="+", default=list(ATTENTION), choices=list(ATTENTION))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--tag", default="", help="suffix of the result name (e.g. -dev for a trial)")
    p.set_defaults(run=cost)
    args = parser.parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
