"""Efficient-attention students on long documents (issue 12): cost against length, long NER and QA,
and what the conversion costs on short tasks.

Subcommands (results: benchmarks/results/long/<key>.json; tables from those files only):

    python benchmarks/bench_long.py cost                 # latency + peak memory at 512..4096 tokens
    python benchmarks/bench_long.py ner                  # LitBank whole-document NER (fold 0; --litbank DIR or $LMDISTILL_LITBANK)
    python benchmarks/bench_long.py qa                   # COVID-QA (split by document; --covid-qa FILE or $LMDISTILL_COVID_QA)
    python benchmarks/bench_long.py qa --squad-init FILE # ... with a teacher fine-tuned on SQuAD v1.1 first
    python benchmarks/bench_long.py qa-target ...        # the windowed teacher's span targets on 4,096-token rows
    python benchmarks/bench_long.py short --task wikiann # WikiANN (5k train sentences), students with 512 positions
    python benchmarks/bench_long.py short --task squad   # the SQuAD v1.1 slice (269 train / 300 dev questions)
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
                     (QA: the question)
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
import re  # noqa: E402
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


# Short tasks: the same students with 512 positions (what the conversion costs where texts are short).
# BigBird needs max_length > (5 + 2 x 2) x 32 = 288, so every input up to 288 tokens runs full attention.
SHORT_ATTENTION = {
    "longformer": {"type": "longformer", "window": 128},
    "bigbird": {"type": "bigbird", "block_size": 32, "num_random_blocks": 2},
    "nystromformer": {"type": "nystromformer", "num_landmarks": 64},
    "lsg": {"type": "lsg", "block_size": 64, "sparse_factor": 4, "sparse_blocks": 1},
}
SHORT_TASKS = {
    "wikiann": {"kind": "token-classification", "train": str(REPO / "data/wikiann_en/train.txt"),
                "eval": str(REPO / "data/wikiann_en/dev.txt"), "format": "conll", "max_length": 64,
                "max_train_samples": 5000, "max_eval_samples": 2000},
    "squad": {"kind": "question-answering", "train": str(REPO / "data/squad_v1.1/train-v1.1.University_of_Notre_Dame.json"),
              "eval": str(REPO / "data/squad_v1.1/dev-v1.1.Super_Bowl_50.json"), "max_length": 384,
              "max_eval_samples": 300},
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


# ---- task runs: LitBank NER, COVID-QA, short tasks ------------------------------------------------------
def litbank_folders(litbank: Path) -> dict[str, Path]:
    """Fold-0 split folders of brat files (symlinks into the LitBank copy)."""
    folders = {}
    for split in ("train", "dev", "test"):
        folder = WORK / "data" / "litbank" / split
        folder.mkdir(parents=True, exist_ok=True)
        for name in (litbank / "splits_fold0" / f"{split}.ids").read_text().split():
            stem = name.removesuffix(".tsv")
            for suffix in (".txt", ".ann"):
                link = folder / (stem + suffix)
                if not link.exists():
                    link.symlink_to(litbank / "entities_brat" / (stem + suffix))
        folders[split] = folder
    return folders


def covid_qa_files(source: Path, test_docs: int, max_train_questions: int, seed: int = 0) -> dict[str, Path]:
    """Split COVID-QA by document (seeded shuffle of the document ids): `test_docs` documents for
    evaluation, the rest for training, of which the first `max_train_questions` questions are kept."""
    import random

    data = json.loads(source.read_text())["data"]
    ids = sorted(p["document_id"] for article in data for p in article["paragraphs"])
    random.Random(seed).shuffle(ids)
    test_ids = set(ids[:test_docs])
    splits = {"train": [], "test": []}
    for article in data:
        split = "test" if article["paragraphs"][0]["document_id"] in test_ids else "train"
        splits[split].append(article)
    kept, count = [], 0
    for article in splits["train"]:
        if count >= max_train_questions:
            break
        paragraph = dict(article["paragraphs"][0])
        paragraph["qas"] = paragraph["qas"][: max_train_questions - count]
        count += len(paragraph["qas"])
        kept.append({"paragraphs": [paragraph]})
    splits["train"] = kept
    folder = WORK / "data" / "covid_qa"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, articles in splits.items():
        paths[split] = folder / f"{split}-seed{seed}-n{max_train_questions}-t{test_docs}.json"
        paths[split].write_text(json.dumps({"data": articles}))
    return paths


def squad_teacher(path: Path) -> str:
    """MiniLM-L6 fine-tuned on SQuAD v1.1 (the given train file; 2 epochs, 384-token windows) by
    lmdistill's own teacher stage and cached like every teacher; returns its folder. A COVID-QA teacher
    starts from it, as QA models for a specialised domain do: a few hundred questions alone teach a
    MiniLM little (on the 269-question SQuAD slice it reaches F1 9.3, the `short --task squad` table)."""
    from lmdistill.api import finetune_teacher, load_teacher
    from lmdistill.config import load_config
    from lmdistill.models.teacher import default_cache_dir
    from lmdistill.tasks import build_task

    config = load_config({
        "teacher": {"path": "minilm", "epochs": 2.0, "learning_rate": 1e-4, "batch_size": 32},
        "student": {"layers": LAYERS},
        "task": {"kind": "question-answering", "train": str(path), "eval": str(path), "max_length": 384,
                 "doc_stride": 128},
        "recipe": {"name": "kd"},
        "output": str(WORK / "squad-teacher"),
    })
    task, cache_dir = build_task(config.task), default_cache_dir(config.cache_dir)
    teacher, tokenizer, source, _ = load_teacher(config, task, cache_dir, False)
    return finetune_teacher(teacher, tokenizer, source, config, task, cache_dir, False)[1]


def task_settings(args) -> tuple[str, dict]:
    if args.command == "ner":
        import common

        folders = litbank_folders(common.outside_data(args.litbank, "LMDISTILL_LITBANK", "--litbank",
                                                      "the LitBank folder (litbank of the project's data)",
                                                      "bench_long"))
        return "litbank", {"kind": "token-classification", "train": str(folders["train"]),
                           "eval": str(folders["test"]), "max_length": MAX_LENGTH, "doc_stride": 128}
    if args.command == "qa":
        import common

        path = common.outside_data(args.covid_qa, "LMDISTILL_COVID_QA", "--covid-qa",
                                   "the COVID-QA json (covid_qa_prerelease/covid_qa_200423.ccby.json of the "
                                   "project's data)", "bench_long")
        files = covid_qa_files(path, args.test_docs, args.max_train_questions)
        return "covidqa", {"kind": "question-answering", "train": str(files["train"]), "eval": str(files["test"]),
                           "max_length": args.qa_length, "doc_stride": 128, "max_answer_tokens": 100}
    if args.command == "short":
        return args.task, dict(SHORT_TASKS[args.task])
    raise ValueError(args.command)


def student_settings(name: str, task_kind: str, max_length: int, qa_global: str = "question") -> dict:
    student = {"layers": LAYERS}
    if name != "full":
        presets = SHORT_ATTENTION if max_length <= 512 else ATTENTION
        attention = dict(presets[name], max_length=max_length)
        if name in ("longformer", "lsg") and task_kind == "question-answering":
            attention["global"] = [qa_global]
        student["attention"] = attention
    return student


def per_document_cost(task, model, tokenizer) -> dict:
    """Latency per evaluation document (all its windows in one batch, median over documents). Memory is
    not measured here: in the training process the allocator reuses pages it already holds, so a peak
    read there says nothing; the `cost` subcommand measures it in fresh processes."""
    import statistics

    dataset = task.eval_dataset(tokenizer, model.config)
    doc_column = "_doc" if "_doc" in dataset.column_names else "_example_id"
    keep = [c for c in dataset.column_names if not c.startswith("_")]
    collate = task.collator(tokenizer)
    groups: dict = {}
    for row, doc in enumerate(dataset[doc_column]):
        groups.setdefault(doc, []).append(row)
    model.eval()
    batches = {doc: collate([{k: dataset[r][k] for k in keep} for r in rows]) for doc, rows in groups.items()}
    model(**batches[next(iter(batches))])  # warm-up
    times = []
    for batch in batches.values():
        start = time.perf_counter()
        model(**batch)
        times.append((time.perf_counter() - start) * 1000)
    return {"latency_ms_per_doc": round(statistics.median(times), 1), "docs": len(times),
            "windows_per_doc": round(len(dataset) / len(groups), 2),
            "tokens_longest_doc": max(int(b["attention_mask"].sum()) for b in batches.values())}


def run_config(args, name: str, task_cfg: dict, teacher_init: dict, key: str) -> dict:
    """The lmdistill config of one student's run."""
    whole_documents = name != "full" and args.command != "short"  # efficient students on ner / qa
    return {
        "teacher": {"path": "minilm", "epochs": args.teacher_epochs, "learning_rate": args.teacher_lr,
                    "batch_size": args.teacher_batch_size, **teacher_init},
        "student": student_settings(name, task_cfg["kind"], {"ner": MAX_LENGTH, "qa": args.qa_length}.get(
            args.command, 512), args.qa_global),
        "task": task_cfg,
        "recipe": {"name": "kd", "temperature": 2.0, "alpha": 0.5} if args.recipe == "kd" else {"name": args.recipe},
        "training": {"epochs": args.epochs,
                     # whole documents (ner, qa) in small batches; short texts in the same batches for all
                     "batch_size": args.batch_size if whole_documents else args.full_batch_size,
                     "learning_rate": args.lr, "seed": args.seed, "logging_steps": 10, "save_steps": 10000,
                     # 64 rows of 4,096 tokens do not fit in 24 GB for Longformer (its L x L mask) and BigBird
                     # (dense L x L probabilities); the batch changes no score
                     "eval_batch_size": args.eval_batch_size or (8 if whole_documents else 64)},
        "bench": {"enabled": False},
        "output": str(WORK / key),
    }


def squad_init(args) -> dict:
    """teacher settings of `--squad-init` (and the result-name tag), or {}."""
    if not args.squad_init:
        return {}
    import common

    squad = common.outside_data(args.squad_init, "LMDISTILL_SQUAD_TRAIN", "--squad-init",
                                "a SQuAD v1.1 train file (squad_v1.1_train11 of the project's data)", "bench_long")
    args.tag += "-squadinit"
    return {"path": squad_teacher(squad), "finetune": "always"}


def qa_target(args) -> None:
    """What the windowed teacher gives a 4,096-token QA student to distil: on the first `--rows` training
    rows, the merged start distribution at T 1 and 2 (mass on [CLS], on the gold start, entropy against
    the uniform ln L) and whether its argmax is the gold start. The teacher is the cached one of `qa`
    with the same options. Prints the medians and writes benchmarks/results/long-qa-target.json."""
    import logging
    import math
    import statistics

    import torch

    from lmdistill.api import finetune_teacher, load_teacher
    from lmdistill.config import load_config
    from lmdistill.models.teacher import default_cache_dir
    from lmdistill.tasks import build_task

    logging.basicConfig(level=logging.WARNING)
    args.command = "qa"  # the settings of the `qa` runs (task_settings, run_config read the command)
    _, task_cfg = task_settings(args)
    config = load_config(run_config(args, "lsg", task_cfg, squad_init(args), "qa-target"))
    task, cache_dir = build_task(config.task), default_cache_dir(config.cache_dir)
    teacher, tokenizer, source, _ = load_teacher(config, task, cache_dir, False)
    teacher = finetune_teacher(teacher, tokenizer, source, config, task, cache_dir, False)[0].eval()
    rows = task.train_dataset(tokenizer)  # the student's 4,096-token rows
    from transformers import BertConfig

    windowed = task.distillation_teacher(teacher, tokenizer, BertConfig(max_position_embeddings=args.qa_length))
    collate = task.collator(tokenizer)
    stats = []
    with torch.inference_mode():
        for i in range(min(args.rows, len(rows))):
            row = {k: rows[i][k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            gold = rows[i]["start_positions"]
            start = windowed(**collate([row])).start_logits[0]
            entry = {"length": len(start), "gold": gold, "argmax": int(start.argmax()),
                     "argmax_without_cls": int(start[1:].argmax()) + 1}
            for t in (1, 2):
                p = (start / t).softmax(-1)
                entry[f"cls_T{t}"] = float(p[0])
                entry[f"gold_T{t}"] = float(p[gold])
                entry[f"entropy_T{t}"] = float(-(p * p.clamp_min(1e-12).log()).sum())
            entry["uniform_entropy"] = math.log(len(start))
            stats.append(entry)
    answered = [e for e in stats if e["gold"]]
    summary = {"rows": len(stats), "rows_with_answer": len(answered),
               "argmax_is_cls": sum(e["argmax"] == 0 for e in stats),
               "argmax_without_cls_is_gold": sum(e["argmax_without_cls"] == e["gold"] for e in answered)}
    for name in ("cls_T1", "cls_T2", "entropy_T1", "entropy_T2", "uniform_entropy"):
        summary[f"median_{name}"] = round(statistics.median(e[name] for e in stats), 4)
    for name in ("gold_T1", "gold_T2"):
        summary[f"median_{name}_answer_rows"] = round(statistics.median(e[name] for e in answered), 4)
    print(json.dumps(summary, indent=1))
    (RESULTS.parent / "long-qa-target.json").write_text(json.dumps({"summary": summary, "rows": stats}, indent=1))


def run_task(args) -> None:
    """Teacher (fine-tuned once, cached) and one student per name: train, score, measure; one JSON each."""
    import logging

    import shutil

    import torch
    from transformers import AutoConfig

    from lmdistill import run_folder
    from lmdistill.api import distill
    from lmdistill.config import load_config
    from lmdistill.models.teacher import load_model, load_tokenizer
    from lmdistill.tasks import build_task

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    task_name, task_cfg = task_settings(args)
    teacher_init = squad_init(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.students:
        key = f"{task_name}-{args.recipe}-L3-{name}-s{args.seed}-e{args.epochs:g}{args.tag}"
        path = RESULTS / f"{key}.json"
        if path.is_file():
            print(f"{key}: stored", flush=True)
            continue
        config = run_config(args, name, task_cfg, teacher_init, key)
        print(f"{key}: training", flush=True)
        start = time.time()
        resume = args.resume and (WORK / key / run_folder.MARKER).is_file()
        result = distill(config, resume=True) if resume else distill(config, overwrite=True)
        wall = time.time() - start
        task = build_task(load_config(config).task)
        tokenizer = load_tokenizer(str(result.student_dir), "student")
        cost = {}
        with torch.inference_mode():
            teacher_dir = result.report["teacher_info"].get("cache_dir") or "minilm"
            for role, folder in (("teacher", teacher_dir), ("student", str(result.student_dir))):
                task.bind(AutoConfig.from_pretrained(folder))
                model = load_model(task.auto_class(), folder, {}, key=role)[0]
                cost[role] = per_document_cost(task, model, tokenizer)
        record = {"key": key, "wall_s": round(wall, 1), **({"resumed": True} if resume else {}), "config": config,
                  "report": result.report, "cost": cost, "threads": torch.get_num_threads()}
        path.write_text(json.dumps(record, indent=1))
        report = result.report
        print(f"[done] {key}: {report['student']['metric']} {report['student']['score']:.4f} (teacher "
              f"{report['teacher']['score']:.4f}), retention {report['retention']:.4f}, per doc "
              f"{cost['student']['latency_ms_per_doc']} ms vs {cost['teacher']['latency_ms_per_doc']} ms, "
              f"{wall:.0f} s", flush=True)
        shutil.rmtree(WORK / key, ignore_errors=True)


def describe_student(config: dict) -> str:
    attention = config["student"].get("attention")
    if not attention:
        return "full attention, 512 positions (windows)"
    settings = ", ".join(f"{k} {v}" for k, v in attention.items() if k not in ("type", "max_length"))
    return f"{attention['type']} ({settings}), {attention['max_length']} positions"


def table(args) -> None:
    """Markdown tables from the stored JSON: one per task (a row per student, mean ± std over the seeds
    stored for it), then the cost curve."""
    import statistics

    import common

    from lmdistill import cost as cost_lib

    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json")) if not p.name.startswith("cost")]
    # Stored runs made before per_document_cost stopped reading memory also hold
    # `peak_mem_mb_longest_doc` (~0, see there): not shown.
    lines = []
    for task in dict.fromkeys(r["key"].split("-")[0] for r in records):
        mine = [r for r in records if r["key"].startswith(task + "-")]
        first = mine[0]
        qa = first["config"]["task"]["kind"] == "question-answering"
        metric = first["report"]["teacher"]["metric"]
        scale = 1 if qa else 100
        extra = "exact match (%) | " if qa else ""
        unit = "question" if qa else "document"  # QA: a context read with its question
        lines += [f"**{task}** ({first['config']['task']['kind']}; {metric}; per-{unit} figures on the "
                  f"{first['cost']['teacher']['docs']} evaluation {unit}s)", "",
                  f"| model | attention | seeds | {metric} (%) | {extra}retention (%) | windows / {unit} | "
                  f"latency / {unit} (ms) | faster than the teacher (same run) |", "|---|---|---|---|---|---|---|---|" +
                  ("---|" if qa else "")]
        # one row per student: the same key but for its seed (`-s<N>-`)
        rows: dict = {}
        for r in mine:
            rows.setdefault(re.sub(r"-s\d+-", "-", r["key"]), []).append(r)
        teachers = {round(r["report"]["teacher"]["score"], 6) for r in mine}
        if len(teachers) != 1:  # e.g. a stored run from before a teacher setting changed
            sys.exit(f"bench_long table: {task}: runs with different teachers (scores {sorted(teachers)}); "
                     "move the stale JSON out of benchmarks/results/long")
        teacher, tc = first["report"]["teacher"], first["cost"]["teacher"]
        em = f"{teacher['metrics']['exact_match']:.2f} | " if qa else ""
        lines.append(f"| teacher MiniLM-L6 | full, 512 positions (windows) | | {teacher['score'] * scale:.2f} | {em}100 | "
                     f"{tc['windows_per_doc']} | {tc['latency_ms_per_doc']} | 1.00x |")
        for name, runs in rows.items():
            c = runs[0]["cost"]["student"]
            em = common.mean_std([r["report"]["student"]["metrics"]["exact_match"] for r in runs]) + " | " if qa else ""
            speed = statistics.median(r["cost"]["teacher"]["latency_ms_per_doc"] / r["cost"]["student"]["latency_ms_per_doc"]
                                      for r in runs)
            lines.append(f"| {name} | {describe_student(runs[0]['config'])} | {len(runs)} | "
                         f"{common.mean_std([r['report']['student']['score'] * scale for r in runs])} | {em}"
                         f"{common.mean_std([100 * r['report']['retention'] for r in runs])} | {c['windows_per_doc']} | "
                         f"{statistics.median(r['cost']['student']['latency_ms_per_doc'] for r in runs):.1f} | {speed:.2f}x |")
        lines.append("")
    for path in sorted(RESULTS.glob("cost*.json")):
        record = json.loads(path.read_text())
        lines += [f"**cost against length** ({path.name}; {record['device']}; median of {record['settings']['rounds']} "
                  f"rounds of {record['settings']['repeats']} passes, batch 1)", "",
                  cost_lib.markdown(record["rows"], "student L3, full (eager)"), "",
                  cost_lib.ratios(record["rows"], "student L3, full (sdpa)"), ""]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


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
    for command, help_text in (("ner", "LitBank whole-document NER"), ("qa", "COVID-QA, split by document"),
                               ("qa-target", "COVID-QA: what the windowed teacher gives a 4,096-token student"),
                               ("short", "a short task (WikiANN or the SQuAD slice), students with 512 positions")):
        p = sub.add_parser(command, help=help_text)
        p.add_argument("--task", default="wikiann", choices=list(SHORT_TASKS), help="short: which task")
        p.add_argument("--students", nargs="+", default=["full", *ATTENTION], choices=["full", *ATTENTION])
        p.add_argument("--recipe", default="kd")
        p.add_argument("--epochs", type=float, default=2.0)
        p.add_argument("--teacher-epochs", type=float, default=2.0)
        p.add_argument("--teacher-lr", type=float, default=1e-4)
        p.add_argument("--teacher-batch-size", type=int, default=8, help="512-token windows")
        p.add_argument("--lr", type=float, default=1e-4)
        p.add_argument("--batch-size", type=int, default=2, help="efficient students on whole documents (ner, qa; short tasks use --full-batch-size)")
        p.add_argument("--full-batch-size", type=int, default=8, help="the full-attention student (512-token windows)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--eval-batch-size", type=int, default=None,
                       help="rows per evaluation batch (default 8 for efficient students on whole documents, else 64)")
        p.add_argument("--resume", action="store_true",
                       help="continue a killed run from its folder under runs/bench-long (lmdistill --resume: a "
                            "finished stage is not trained again; wall_s then counts only this process)")
        p.add_argument("--tag", default="")
        p.add_argument("--litbank", default=None, help="the LitBank folder (or $LMDISTILL_LITBANK)")
        p.add_argument("--covid-qa", default=None, help="the COVID-QA json (or $LMDISTILL_COVID_QA)")
        p.add_argument("--test-docs", type=int, default=9)
        p.add_argument("--max-train-questions", type=int, default=300)
        p.add_argument("--qa-length", type=int, default=MAX_LENGTH, help="QA: students' max_length")
        p.add_argument("--squad-init", default=None,
                       help="QA: a SQuAD v1.1 train file; the teacher is fine-tuned on it before the task "
                            "(the result names end in -squadinit)")
        p.add_argument("--qa-global", default="question", choices=["question", "cls"],
                       help="QA: the global tokens of the Longformer and LSG students")
        p.add_argument("--rows", type=int, default=30, help="qa-target: how many training rows")
        p.set_defaults(run=qa_target if command == "qa-target" else run_task)
    p = sub.add_parser("table", help="tables from the stored results")
    p.add_argument("--markdown", default=None)
    p.set_defaults(run=table)
    args = parser.parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
