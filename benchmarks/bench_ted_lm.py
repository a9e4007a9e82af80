"""TED for language models (continual pre-training): kd, lwd, fcd and ted on the LitBank books.

Teacher: SmolLM2-135M-Instruct (`teacher: smollm2`, 30 layers, 576 wide, vocabulary 49,152; the
packaged Q4_1 GGUF dequantised once by lmdistill), not fine-tuned: it is already a language model.

Student: 20 of its 30 layers, with their weights: layers 0-13 and 24-29, i.e. the contiguous block
14-23 is dropped (--layers). Why these: cutting layers uniformly breaks SmolLM2 (`--probe`: 10 or 15
uniformly kept layers start at 12-15 nats per token on held-out books, above a uniform guess over the
vocabulary, 10.8 nats), so a CPU-sized budget would only measure how fast each recipe repairs a broken
model. Dropping one block of late-middle layers keeps far more (see the probe table in the README), and
20 layers keep the start close enough to the teacher that the recipes' distillation signals, not
repair, decide the result. The probe's figures: `--probe` (zero-shot perplexity of candidate cuts on
held-out book blocks, and the hidden-state / KL magnitudes the loss weights were set from).

Data (`prepare_data`, written once under runs/bench/ted-lm-data/): the 80 books of
LitBank books folder (--books or $LMDISTILL_BOOKS) in name order; every 10th (8 books) is held out. Training text: an
equal share of --train-tokens from each of the 72 other books (paragraphs after the first 20, which
hold titles and contents), one paragraph per line, packed into blocks of --block-size tokens (64) by
the language-modelling task. Held-out text: --eval-tokens from the 8 held-out books, the same way.
WikiText-2: data/wikitext2/eval.txt (7 articles), also in blocks of --block-size.

Budget: --train-tokens (204,800 = 3,200 blocks of 64) per epoch, batch 8 (400 steps per epoch),
lr 3e-4 (the FCD causal suite's), AdamW, warmup 10%, linear decay, seed per run. Blocks of 64 rather
than 128: the cost per token is the same, so for a fixed token budget the student gets twice the
updates, which is what a damaged model needs most.

Recipes (the same temperature, 1, for all, so one teacher-output cache entry serves every run; at T = 1
the top-256 cache is 6.5-8.5% below the full KL with gradient cosine >= 0.996, at T = 2 it is 56-64% low):
  kd    0.5 CE + 0.5 T^2 KL over the vocabulary at every position
  lwd   kd + beta * mean MSE of raw hidden states over the 5 layer pairs below
  fcd   0.5 CE + 0.5 KD + causal token relations + per-position sequence relations, same pairs
        (FCD-style: our reconstruction, recipes/fcd.py)
  ted   4 stages: teacher filters (--filter-epochs), student continued pre-training (1 epoch),
        student filters (--filter-epochs), stage II (1 epoch) = CE + alpha_kl T^2 KL + alpha_mse MSE
        of the filtered states; alpha_kl 1 so that CE : KL is 1 : 1 as in kd (the official GLUE value
        20 makes stage II almost pure KD, see the README's TED section).
  Layer pairs: TED's interval rule with student interval 4 (hidden states 4, 8, 12, 16, 20) and
  teacher interval 6 (6, 12, 18, 24, 30); lwd and fcd use the same pairs as their layer_map, so the
  three layer-wise recipes differ in what they match, not where.
Compute-matched control: ted updates the student backbone for 2 epochs (its continued pre-training
stage, then stage II) plus 2 x --filter-epochs of filter-only stages; kd, lwd and fcd run at 1 epoch
and again at 2 epochs (`-e2` keys).

Teacher-output cache: on (training.cache_teacher), top-256 logits + tail log-sum-exp at T 1 in fp16
and the 5 teacher layers' hidden states; the teacher's pass over the training data is paid once for
all runs (every run of the suite reads the same entry). The KL against the cached teacher is the
top-k + tail-bucket KL (`losses.topk_kd_kl`), a lower bound of the full KL.

Metric: perplexity on the held-out book blocks (the run's eval split) and on WikiText-2 eval.txt
(evaluated after training on the saved student), for the teacher and every student.

    .venv/bin/python benchmarks/bench_ted_lm.py --probe                      # the layer-choice probe
    .venv/bin/python benchmarks/bench_ted_lm.py --dry-run
    .venv/bin/python benchmarks/bench_ted_lm.py                              # run what is missing
    .venv/bin/python benchmarks/bench_ted_lm.py --table-only --markdown benchmarks/results/ted-lm.md
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import common

DATA_DIR = common.WORK / "ted-lm-data"
WIKITEXT = common.REPO / "data" / "wikitext2" / "eval.txt"
TEACHER_LAYERS = 30
DEFAULT_LAYERS = list(range(14)) + list(range(24, 30))
BATCH = 8
LR = 3e-4
FILTER_LR = 1e-3
TEMPERATURE = 1.0  # the top-k cache is close to the full KL at T = 1, not at 2 (README top-k table)
PAIRS = [[4, 6], [8, 12], [12, 18], [16, 24], [20, 30]]
RECIPES = {
    "finetune": {"name": "finetune"},
    "kd": {"name": "kd", "temperature": TEMPERATURE, "alpha": 0.5},
    "lwd": {"name": "lwd", "temperature": TEMPERATURE, "alpha": 0.5, "layer_map": PAIRS, "beta": 5e-4},
    "fcd": {"name": "fcd", "temperature": TEMPERATURE, "alpha_task": 0.5, "alpha_kd": 0.5, "beta": 1.0, "gamma": 1.0,
            "layer_map": PAIRS, "causal": "auto"},
    "ted": {"name": "ted", "temperature": TEMPERATURE, "alpha_kl": 1.0, "alpha_mse": 1e-3, "student_filter_interval": 4,
            "teacher_filter_interval": 6, "lm_head": "reuse", "filter_init": "auto",
            "stage1_teacher_lr": FILTER_LR, "stage1_student_lr": FILTER_LR},
}


# ---- data ---------------------------------------------------------------------------------------

def book_split(folder: Path) -> tuple[list[Path], list[Path]]:
    """(training books, held-out books): every 10th book in name order is held out."""
    books = sorted(folder.glob("*.txt"))
    if len(books) < 10:
        sys.exit(f"bench_ted_lm: {folder} holds {len(books)} books; the LitBank folder has 80")
    held = [b for i, b in enumerate(books) if i % 10 == 9]
    return [b for b in books if b not in held], held


def _slices(books: list[Path], tokens: int, tokenizer) -> list[str]:
    """An equal share of `tokens` from each book: its paragraphs after the first 20, in order."""
    from lmdistill.tasks.corpus import read_paragraphs

    share = math.ceil(tokens / len(books))
    lines, total = [], 0
    for book in books:
        if total >= tokens:  # only tiny budgets (script checks) stop before the last book
            break
        taken = 0
        for paragraph in read_paragraphs(book)[20:]:
            lines.append(paragraph)
            count = len(tokenizer(paragraph, add_special_tokens=False)["input_ids"]) + 1  # + EOS
            taken, total = taken + count, total + count
            if taken >= share:
                break
    return lines


def prepare_data(args, tokenizer) -> dict[str, Path]:
    """Write the training and held-out book text once (deterministic); return their paths."""
    folder = DATA_DIR / f"t{args.train_tokens}-v{args.eval_tokens}"
    paths = {"train": folder / "train.txt", "eval": folder / "books-eval.txt"}
    if all(p.is_file() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    train_books, held_books = book_split(common.books_folder(args.books, "bench_ted_lm"))
    for split, books, tokens in (("train", train_books, args.train_tokens), ("eval", held_books, args.eval_tokens)):
        tmp = paths[split].with_suffix(".tmp")
        tmp.write_text("\n".join(_slices(books, tokens, tokenizer)) + "\n")
        tmp.replace(paths[split])
    (folder / "books.json").write_text(json.dumps({"train": [b.name for b in train_books],
                                                   "held_out": [b.name for b in held_books]}, indent=1))
    return paths


def teacher_tokenizer():
    common._import_lmdistill()
    from lmdistill.config import TeacherConfig
    from lmdistill.models.teacher import default_cache_dir, load_tokenizer, resolve_teacher

    source = resolve_teacher(TeacherConfig(path="smollm2"), default_cache_dir())
    return source, load_tokenizer(source)


# ---- runs ----------------------------------------------------------------------------------------

def run_key(recipe: str, seed: int, epochs: float, args) -> str:
    key = f"books-{recipe}-smollm2-L{len(args.layers)}-s{seed}-b{args.block_size}-t{args.train_tokens}-T{TEMPERATURE:g}-k{args.top_k}"
    if epochs != 1:
        key += f"-e{epochs:g}"
    if recipe == "ted" and args.filter_epochs != 0.25:
        key += f"-fe{args.filter_epochs:g}"
    return key


def experiment(recipe: str, seed: int, epochs: float, args, paths: dict, key: str) -> dict:
    settings = dict(RECIPES[recipe])
    if recipe == "ted":
        settings.update(stage1_teacher_epochs=args.filter_epochs, stage1_student_epochs=args.filter_epochs)
    return {
        "teacher": {"path": "smollm2", "finetune": "never"},
        "student": {"layers": list(args.layers)},
        "task": {"kind": "language-modeling", "lm_type": "causal", "format": "text",
                 "train": str(paths["train"]), "eval": str(paths["eval"]),
                 "block_size": args.block_size, "max_length": args.block_size},
        "recipe": settings,
        "training": {"epochs": epochs, "batch_size": BATCH, "eval_batch_size": 16, "learning_rate": LR,
                     "seed": seed, "logging_steps": 20, "save_steps": 100, "save_total_limit": 1,
                     "cache_teacher": True, "cache_top_k": args.top_k},
        "bench": {"enabled": False},
        "output": str(common.WORK / key),
    }


def wikitext_eval(result, lines: int | None = None) -> dict:
    """Perplexity of the trained student and (once per suite) of the teacher on WikiText-2 eval.txt
    (its first `lines` lines when given: for a quick check of the script only)."""
    from lmdistill.config import TaskConfig
    from lmdistill.models.teacher import load_model, load_tokenizer
    from lmdistill.tasks import build_task

    config = result.report["config"]
    task = build_task(TaskConfig(kind="language-modeling", lm_type="causal", format="text", train=str(WIKITEXT),
                                 eval=str(WIKITEXT), block_size=config["task"]["block_size"],
                                 max_length=config["task"]["block_size"], max_eval_samples=lines))
    tokenizer = load_tokenizer(str(result.student_dir))
    from transformers import AutoModelForCausalLM

    model, _ = load_model(AutoModelForCausalLM, str(result.student_dir), {})
    task.bind(model.config)
    out = {"student": task.evaluate(model.eval(), tokenizer, 16, desc="wikitext student")}
    teacher_file = common.RUNS / (f"books-teacher-smollm2-wikitext-b{config['task']['block_size']}"
                                  + (f"-v{lines}" if lines else "") + ".json")
    if not teacher_file.is_file():
        teacher_dir = result.report["teacher_info"].get("cache_dir") or teacher_tokenizer()[0]
        teacher, _ = load_model(AutoModelForCausalLM, teacher_dir, {})
        teacher_scores = task.evaluate(teacher.eval(), tokenizer, 16, desc="wikitext teacher")
        teacher_file.write_text(json.dumps(teacher_scores, indent=1))
    out["teacher"] = json.loads(teacher_file.read_text())
    return {"wikitext": out}


def plan(args, paths: dict) -> list[common.Run]:
    runs = []
    for recipe in args.recipes:
        epoch_list = [1.0] if recipe == "ted" else sorted(set(args.epochs))
        for epochs in epoch_list:
            for seed in range(args.seeds):
                key = run_key(recipe, seed, epochs, args)
                runs.append(common.Run(key, "books", f"smollm2-L{len(args.layers)}", recipe, seed,
                                       experiment(recipe, seed, epochs, args, paths, key)))
    return runs


# ---- table ---------------------------------------------------------------------------------------

def _student_updates(record: dict) -> tuple[int, int]:
    """(student backbone updates, filter-only steps) of a run, from its stage summaries."""
    backbone = filters = 0
    for stage in record["report"]["stages"]:
        if stage["stage"] in ("teacher-filters", "student-filters"):
            filters += stage["steps"]
        else:
            backbone += stage["steps"]
    return backbone, filters


def table(runs: list[common.Run], args) -> str:
    records = {run.key: common.stored(run) for run in runs}
    done = [r for r in records.values() if r]
    lines = [f"### TED on language modelling: SmolLM2-135M → {len(args.layers)} layers, LitBank books", "",
             "| model | recipe | epochs | student updates (+ filter-only steps) | ppl held-out books | "
             "ppl WikiText-2 | train time (min) | seeds |", "|---|---|---|---|---|---|---|---|"]
    if done:
        report = done[0]["report"]
        wiki = next((r["wikitext"]["teacher"]["score"] for r in done if "wikitext" in r), None)
        lines.append(f"| teacher SmolLM2-135M (30 layers, {report['teacher']['params'] / 1e6:.1f}M) | — | — | — | "
                     f"{report['teacher']['score']:.2f} | {wiki:.2f} | — | — |" if wiki else
                     f"| teacher SmolLM2-135M | — | — | — | {report['teacher']['score']:.2f} | n/a | — | — |")
    groups: dict[tuple[str, float], list[common.Run]] = {}
    for run in runs:
        groups.setdefault((run.recipe, run.config["training"]["epochs"]), []).append(run)
    for (recipe, epochs), members in groups.items():
        reps = [records[r.key] for r in members if records[r.key]]
        if not reps:
            continue
        backbone, filters = _student_updates(reps[0])
        updates = f"{backbone}" + (f" (+ {filters})" if filters else "")
        shown_epochs = "1 + 1 (+ filters)" if recipe == "ted" else f"{epochs:g}"
        wiki = [r["wikitext"]["student"]["score"] for r in reps if "wikitext" in r]
        lines.append(
            f"| student ({len(args.layers)} layers, {reps[0]['report']['student']['params'] / 1e6:.1f}M) | {recipe} | "
            f"{shown_epochs} | {updates} | {common.mean_std([r['report']['student']['score'] for r in reps])} | "
            f"{common.mean_std(wiki)} | {statistics.mean(r['wall_s'] for r in reps) / 60:.1f} | "
            f"{len(reps)} of {len(members)} |")
    if not done:
        lines.append("| (no stored results yet) | | | | | | | |")
    lines += ["", (
        f"Student: SmolLM2 layers {_ranges(args.layers)} with their weights. Data: an equal share of "
        f"{args.train_tokens:,} tokens from each of 72 LitBank books per epoch, blocks of {args.block_size}, batch "
        f"{BATCH}, lr {LR:g}; perplexity on {args.eval_tokens:,} tokens of the 8 held-out books and on WikiText-2 "
        f"eval.txt (7 articles), blocks of {args.block_size}. T 2 for every recipe; kd alpha 0.5; lwd beta "
        f"{RECIPES['lwd']['beta']:g}; fcd beta 1, gamma 1; ted alpha_kl {RECIPES['ted']['alpha_kl']:g}, alpha_mse "
        f"{RECIPES['ted']['alpha_mse']:g}, filters after student layers 4, 8, ..., 20 and teacher layers 6, 12, ..., "
        f"30 (the pairs lwd and fcd use too), filter stages {args.filter_epochs:g} epoch at lr {FILTER_LR:g}. "
        f"Teacher outputs from the cache: top-{args.top_k} logits + tail bucket. Mean ± std over the stored seeds.")]
    return "\n".join(lines)


def _ranges(layers: list[int]) -> str:
    parts, start = [], layers[0]
    for prev, cur in zip(layers, layers[1:] + [None]):
        if cur != prev + 1:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = cur
    return ", ".join(parts)


# ---- the layer-choice probe -------------------------------------------------------------------

CANDIDATES = {
    "uniform 6": [0, 5, 10, 15, 20, 25],
    "uniform 10": [i * 3 for i in range(10)],
    "uniform 10 + last": [0, 3, 6, 9, 12, 15, 18, 21, 24, 29],
    "uniform 15": list(range(0, 30, 2)),
    "first 5 + last 5": list(range(5)) + list(range(25, 30)),
    "first 7 + last 3": list(range(7)) + [27, 28, 29],
    "first 12 + last 3": list(range(12)) + [27, 28, 29],
    "drop 10-19": list(range(10)) + list(range(20, 30)),
    "drop 14-23": DEFAULT_LAYERS,
    "drop 18-27": list(range(18)) + [28, 29],
    "drop 20-25": list(range(20)) + list(range(26, 30)),
}


def probe(args) -> int:
    """Zero-shot held-out perplexity of candidate cuts; loss magnitudes of the chosen one."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from lmdistill.losses import kd_kl
    from lmdistill.models.students import layer_subset
    from lmdistill.tasks.language_modeling import text_blocks

    torch.set_num_threads(2)
    source, tokenizer = teacher_tokenizer()
    paths = prepare_data(args, tokenizer)
    lines = paths["eval"].read_text().splitlines()
    blocks = torch.tensor(text_blocks(lines, tokenizer, args.block_size, True)[: args.probe_blocks])
    teacher = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()

    def nll(model) -> float:
        total = count = 0
        with torch.no_grad():
            for i in range(0, len(blocks), BATCH):
                x = blocks[i:i + BATCH]
                logits = model(x).logits[:, :-1]
                total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
                count += x[:, 1:].numel()
        return total / count

    rows = {"teacher (30 layers)": (30, nll(teacher))}
    for name, keep in CANDIDATES.items():
        rows[name] = (len(keep), nll(layer_subset(teacher, keep).eval()))
        print(f"{name}: {rows[name][1]:.3f} nats", flush=True)
    student = layer_subset(teacher, list(args.layers)).eval()
    x = blocks[:BATCH]
    with torch.no_grad():
        t_out = teacher(x, output_hidden_states=True)
        s_out = student(x, output_hidden_states=True)
    T = 2.0
    kl = kd_kl(s_out.logits.reshape(-1, s_out.logits.shape[-1]), t_out.logits.reshape(-1, t_out.logits.shape[-1]), T)
    mse = {f"{s}->{t}": F.mse_loss(s_out.hidden_states[s], t_out.hidden_states[t]).item() for s, t in PAIRS}
    rms = {t: t_out.hidden_states[t].pow(2).mean().sqrt().item() for _, t in PAIRS}
    timing = {}
    for name, model in (("teacher", teacher), ("student", student)):
        times = []
        with torch.no_grad():
            for _ in range(5):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
        timing[name] = statistics.median(times) * 1000
    result = {"blocks": len(blocks), "block_size": args.block_size, "nll": rows, "chosen": list(args.layers),
              "T2_kl_times_T2": kl.item(), "hidden_mse": mse, "teacher_hidden_rms": rms,
              "latency_ms_batch8": timing,
              "params_m": {"teacher": sum(p.numel() for p in teacher.parameters()) / 1e6,
                           "student": sum(p.numel() for p in student.parameters()) / 1e6}}
    out = common.RESULTS / "ted-lm-probe.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"\nwritten to {out}")
    return 0


def probe_filters(args) -> int:
    """Stage I of the teacher's filters alone, at a few learning rates: the per-filter LM loss after
    --probe-steps steps, cycling over the teacher's hidden states of the first --probe-blocks training blocks."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmdistill.models.lm_head import find_lm_head
    from lmdistill.recipes.ted import lm_loss, make_filter
    from lmdistill.tasks.language_modeling import text_blocks

    torch.set_num_threads(2)
    source, tokenizer = teacher_tokenizer()
    paths = prepare_data(args, tokenizer)
    blocks = torch.tensor(text_blocks(paths["train"].read_text().splitlines(), tokenizer, args.block_size, True)
                          [: args.probe_blocks])
    teacher = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval().requires_grad_(False)
    head = find_lm_head(teacher)
    positions = [t for _, t in PAIRS]
    batches = []
    with torch.no_grad():
        for i in range(0, len(blocks), BATCH):
            x = blocks[i:i + BATCH]
            hidden = teacher(x, output_hidden_states=True).hidden_states
            batches.append((x, [hidden[t] for t in positions]))
    result = {"steps": args.probe_steps, "blocks": len(blocks), "positions": positions, "loss": {}}
    for lr in args.probe_lrs:
        torch.manual_seed(0)
        filters = [make_filter(576, 576, False, None, identity=True) for _ in positions]
        optimizer = torch.optim.AdamW([p for f in filters for p in f.parameters()], lr=lr, weight_decay=0.01)
        curve = []
        for step in range(args.probe_steps + 1):
            x, hidden = batches[step % len(batches)]
            losses = [lm_loss(head(f(h), t), x, True) for f, h, t in zip(filters, hidden, positions)]
            curve.append([round(v.item(), 3) for v in losses])
            if step == args.probe_steps:
                break
            optimizer.zero_grad()
            (sum(losses) / len(losses)).backward()
            optimizer.step()
        result["loss"][f"{lr:g}"] = {"first": curve[0], "last": curve[-1]}
        print(f"lr {lr:g}: {curve[0]} -> {curve[-1]}", flush=True)
    out = common.RESULTS / "ted-lm-filter-lr.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"written to {out}")
    return 0


def probe_table() -> str:
    data = json.loads((common.RESULTS / "ted-lm-probe.json").read_text())
    lines = ["| student (layers kept of 30) | layers | nats / token | perplexity |", "|---|---|---|---|"]
    for name, (count, nats) in data["nll"].items():
        lines.append(f"| {name} | {count} | {nats:.2f} | {math.exp(nats):,.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[-1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=["ted", "kd", "lwd", "fcd"])
    p.add_argument("--epochs", nargs="+", type=float, default=[1.0, 2.0],
                   help="epochs of the one-stage recipes (2 = the compute-matched control); ted runs 1 per stage")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds: 0 .. N-1")
    p.add_argument("--layers", nargs="+", type=int, default=DEFAULT_LAYERS, help="teacher layers the student keeps")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--train-tokens", type=int, default=204_800)
    p.add_argument("--eval-tokens", type=int, default=32_768)
    p.add_argument("--filter-epochs", type=float, default=0.25, help="ted: epochs of each filter stage")
    p.add_argument("--books", default=None, help="the LitBank books folder (or $LMDISTILL_BOOKS)")
    p.add_argument("--top-k", type=int, default=256, help="training.cache_top_k")
    p.add_argument("--probe", action="store_true", help="the layer-choice probe (writes results/ted-lm-probe.json)")
    p.add_argument("--probe-blocks", type=int, default=64)
    p.add_argument("--probe-filters", action="store_true", help="teacher stage I alone at --probe-lrs "
                   "(writes results/ted-lm-filter-lr.json)")
    p.add_argument("--probe-lrs", nargs="+", type=float, default=[1e-3, 1e-2])
    p.add_argument("--probe-steps", type=int, default=40)
    p.add_argument("--wikitext-lines", type=int, default=None, help="evaluate on the first N lines only (checks)")
    common.add_mode_flags(p)
    args = p.parse_args(argv)
    if args.probe:
        return probe(args)
    if args.probe_filters:
        return probe_filters(args)
    _, tokenizer = teacher_tokenizer()
    paths = prepare_data(args, tokenizer)
    runs = plan(args, paths)
    after = lambda result: wikitext_eval(result, args.wikitext_lines)  # noqa: E731
    return common.suite_main(args, runs, "", render=lambda: table(runs, args), after=after)


if __name__ == "__main__":
    sys.exit(main())
