"""Training throughput of lmdistill against TextBrewer, a plain PyTorch loop and the student alone.

One workload, seven contenders, each run in its own process (throughput_worker.py says exactly
what each does):

  student-only        hand-written loop, the student on the gold labels, no teacher: the limit
  lmdistill-finetune  lmdistill's `finetune` recipe (the same, through lmdistill)
  plain-kd            hand-written loop: teacher forward under no_grad + KD + hidden MSE + CE, AdamW
  textbrewer          TextBrewer 0.2.1 (GeneralDistiller), same loader/optimizer/objective, in its own venv
  lmdistill-nocache   lmdistill's `lwd` recipe, training.cache_teacher: false (teacher runs every step)
  lmdistill-cold      lwd with the teacher-output cache in a fresh cache_dir (the run builds it)
  lmdistill-warm      lwd with the cache already built (by `lmdistill cache`, before the rounds, untimed)

Workload: the packaged MiniLM-L6 (`teacher: minilm`) fine-tuned on SST-2 by lmdistill as
benchmarks/common.py's TEACHER is (3 epochs, lr 5e-5, batch 32, seed 42; cached, and the same
folder for every contender); student = its layers [0, 2, 4]; KD at T = 4 with alpha 0.5 on the
hard label, plus the hidden-state MSE of student layer k against teacher layer 2k (k = 1..3), beta
1 (lwd, uniform map); batch 32, max_length 64, 3 epochs, seed 0, data/sst2 train (6,920 sentences);
AdamW lr 1e-4, weight decay 0.01, linear schedule with 10% warm-up, gradient clipping at 1.0;
torch.set_num_threads(2) in every process.

Rounds alternate the contenders (A B C ... A B C ...) over --repeats rounds. Each run writes one
JSON under benchmarks/results/throughput/<contender>-r<round>[-e<E>][-n<N>][-s<seed>][-t<T>].json
(a stored run is not run again); the table is built from those files only:

    .venv/bin/python benchmarks/bench_throughput.py --repeats 2                  # run what is missing
    .venv/bin/python benchmarks/bench_throughput.py --table-only --markdown benchmarks/results/throughput.md
    .venv/bin/python benchmarks/bench_throughput.py --profile lmdistill-warm     # one profiled window
    .venv/bin/python benchmarks/bench_throughput.py --max-train-samples 200 --epochs 1   # a quick check

TextBrewer is installed by this script into benchmarks/.venv-textbrewer (no system site packages):
torch 2.13.0 as the Makefile installs it (the local CPU build, kept by constraints.txt), the main
environment's transformers, tokenizers, safetensors, huggingface-hub and numpy versions, and
textbrewer 0.2.1.post1 from the package index (`--setup-textbrewer` does only that).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "throughput"
WORK = REPO / "runs" / "throughput"
WORKER = REPO / "benchmarks" / "throughput_worker.py"
TB_VENV = REPO / "benchmarks" / ".venv-textbrewer"
TEXTBREWER = "textbrewer==0.2.1.post1"
SAME_AS_MAIN = ("transformers", "tokenizers", "safetensors", "huggingface-hub", "numpy")
CONTENDERS = ("student-only", "lmdistill-finetune", "plain-kd", "textbrewer",
              "lmdistill-nocache", "lmdistill-cold", "lmdistill-warm")
KD = ("plain-kd", "textbrewer", "lmdistill-nocache", "lmdistill-cold", "lmdistill-warm")
LABELS = {
    "student-only": "student only, plain loop (the limit)",
    "lmdistill-finetune": "lmdistill `finetune` (student only)",
    "plain-kd": "plain PyTorch KD loop",
    "textbrewer": "TextBrewer 0.2.1 GeneralDistiller",
    "lmdistill-nocache": "lmdistill `lwd`, no cache",
    "lmdistill-cold": "lmdistill `lwd`, cache cold (built in the run)",
    "lmdistill-warm": "lmdistill `lwd`, cache warm",
}
TRAIN_ROWS = 6920
DEFAULTS = {"epochs": 3, "max_train_samples": None, "seed": 0, "threads": 2}
ACCURACY_NOISE = 1.0  # points: ~3 std of 1-epoch kd on SST-2 over seeds (README recipes table: ± 0.35)
TARGET_RATIO, TARGET_SPEEDUP = 1.15, 1.5
# Generic call wrappers (nn.Module.__call__, decorators): left out of the profile rows shown.
WRAPPERS = {"_wrapped_call_impl", "_call_impl", "inner", "wrapper", "decorate_context", "_engine_run_backward",
            "forward_with_checkpointing"}


def suffix(args) -> str:
    """The settings tag of a key: empty at the defaults (3 epochs, all data, seed 0, 2 threads)."""
    tag = ""
    if args.epochs != DEFAULTS["epochs"]:
        tag += f"-e{args.epochs}"
    if args.max_train_samples:
        tag += f"-n{args.max_train_samples}"
    if args.seed != DEFAULTS["seed"]:
        tag += f"-s{args.seed}"
    if args.threads != DEFAULTS["threads"]:
        tag += f"-t{args.threads}"
    return tag


def key(contender: str, round_: int, args) -> str:
    return f"{contender}-r{round_}{suffix(args)}"


def env(textbrewer: bool, threads: int) -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
             TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if textbrewer:
        e.pop("PYTHONPATH", None)  # its venv has no lmdistill
    else:
        e["PYTHONPATH"] = str(REPO / "src")  # this checkout's lmdistill, whatever is installed
    return e


# ---- preparation -------------------------------------------------------------------------------

def setup_textbrewer() -> Path:
    """Create benchmarks/.venv-textbrewer once; return its python."""
    python = TB_VENV / "bin" / "python"
    check = [str(python), "-c", "import textbrewer, transformers, torch; print(textbrewer.__version__, "
             "transformers.__version__, torch.__version__)"]
    if python.is_file() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"creating {TB_VENV.relative_to(REPO)} (textbrewer, torch 2.13.0 CPU, the main transformers)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(TB_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", str(REPO / "constraints.txt")]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    pins = [f"{name}=={metadata.version(name)}" for name in SAME_AS_MAIN]
    subprocess.run([*pip, TEXTBREWER, *pins], check=True)
    out = subprocess.run(check, capture_output=True, text=True, check=True).stdout.split()
    print(f"textbrewer {out[0]}, transformers {out[1]}, torch {out[2]}", flush=True)
    return python


def prepare_teacher(args) -> str:
    """The fine-tuned teacher's folder (fine-tunes it first when lmdistill's cache lacks it)."""
    out = subprocess.run([sys.executable, str(WORKER), "prepare", "--work", str(WORK / "prepare")],
                         env=env(False, args.threads), capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"preparing the teacher failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["teacher"]


def warm_cache_dir(args) -> Path:
    return WORK / f"cache-warm{suffix(args)}"


def build_warm_cache(args, teacher: str) -> None:
    """Fill the warm contender's cache with `lmdistill cache` (untimed, before the rounds)."""
    sys.path.insert(0, str(REPO / "src"))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import throughput_worker as worker

    cache = warm_cache_dir(args)
    worker_args = argparse.Namespace(teacher=teacher, max_train_samples=args.max_train_samples, epochs=args.epochs,
                                     seed=args.seed, threads=args.threads, work=str(WORK / "warm-build"),
                                     cache_dir=str(cache))
    config = worker.lmdistill_config(worker_args, "lmdistill-warm")
    path = WORK / f"warm-config{suffix(args)}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    print(f"filling the warm cache {cache.relative_to(REPO)} (lmdistill cache, untimed)", flush=True)
    start = time.time()
    subprocess.run([sys.executable, "-m", "lmdistill.cli", "cache", str(path)], env=env(False, args.threads),
                   check=True)
    print(f"  done in {time.time() - start:.0f} s", flush=True)


def cache_available() -> bool:
    """Whether this checkout's lmdistill has the teacher-output cache (lmdistill.cache)."""
    return (REPO / "src" / "lmdistill" / "cache.py").is_file() or (REPO / "src" / "lmdistill" / "cache").is_dir()


def commit() -> str | None:
    """The commit the run is made from: $BENCH_COMMIT (a snapshot has no .git), else git's HEAD."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


# ---- running -----------------------------------------------------------------------------------

def run_one(contender: str, round_: int, args, teacher: str, python: dict) -> bool:
    name = key(contender, round_, args)
    target = RESULTS / f"{name}.json"
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tmp = work / "record.json"
    cmd = [python["textbrewer" if contender == "textbrewer" else "main"], str(WORKER), contender,
           "--teacher", teacher, "--out", str(tmp), "--epochs", str(args.epochs), "--seed", str(args.seed),
           "--threads", str(args.threads), "--work", str(work)]
    if args.max_train_samples:
        cmd += ["--max-train-samples", str(args.max_train_samples)]
    if contender == "lmdistill-cold":
        cmd += ["--cache-dir", str(work / "cache")]  # fresh: the run builds it
    elif contender == "lmdistill-warm":
        cmd += ["--cache-dir", str(warm_cache_dir(args))]
    load = os.getloadavg()
    start = time.time()
    print(f"[round {round_}] {contender} ...", end=" ", flush=True)
    out = subprocess.run(cmd, env=env(contender == "textbrewer", args.threads), capture_output=True, text=True)
    wall = time.time() - start
    if out.returncode or not tmp.is_file():
        print(f"FAILED after {wall:.0f} s", flush=True)
        print(out.stderr[-4000:], file=sys.stderr, flush=True)
        return False
    record = json.loads(tmp.read_text())
    record.update({"key": name, "round": round_, "wall_s": wall, "load_before": load, "load_after": os.getloadavg(),
                   "settings": {"epochs": args.epochs, "max_train_samples": args.max_train_samples,
                                "seed": args.seed, "threads": args.threads},
                   "train_examples": min(args.max_train_samples or TRAIN_ROWS, TRAIN_ROWS),
                   "teacher": teacher, "commit": commit(), "cpus": os.cpu_count(), "interpreter": "benchmarks/.venv-textbrewer" if contender == "textbrewer"
                   else sys.prefix})
    RESULTS.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".tmp-{target.name}")
    part.write_text(json.dumps(record, indent=1))
    os.replace(part, target)
    shutil.rmtree(work, ignore_errors=True)
    t = record["timing"]
    print(f"setup {t['setup_s']:.1f} s, epochs {', '.join(f'{e:.1f}' for e in t['epochs_s'])} s, "
          f"dev acc {record['accuracy']:.4f}", flush=True)
    return True


def check_loss(args, teacher: str, python: dict) -> None:
    """The three objectives on one real batch (worker `check-loss`, in each environment): stored as
    loss-check.json, shown under the table."""
    record = {}
    for which in ("main", "textbrewer"):
        tmp = WORK / f"loss-check-{which}.json"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        out = subprocess.run([python[which], str(WORKER), "check-loss", "--teacher", teacher, "--out", str(tmp),
                              "--threads", str(args.threads), "--work", str(WORK / "loss-check")],
                             env=env(which == "textbrewer", args.threads), capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-4000:], file=sys.stderr)
            sys.exit(f"the loss check failed in the {which} environment")
        record.update(json.loads(tmp.read_text()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loss-check.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


def run_profile(contender: str, args, teacher: str, python: dict) -> None:
    """cProfile over --profile-steps steps (after --profile-skip), stored as profile-<contender><tag>.json."""
    work = WORK / f"profile-{contender}{suffix(args)}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tmp = work / "profile.json"
    cmd = [python["textbrewer" if contender == "textbrewer" else "main"], str(WORKER), contender,
           "--teacher", teacher, "--out", str(tmp), "--epochs", str(args.epochs), "--seed", str(args.seed),
           "--threads", str(args.threads), "--work", str(work), "--profile-steps", str(args.profile_steps),
           "--profile-skip", str(args.profile_skip)]
    if args.max_train_samples:
        cmd += ["--max-train-samples", str(args.max_train_samples)]
    if contender == "lmdistill-cold":
        cmd += ["--cache-dir", str(work / "cache")]
    elif contender == "lmdistill-warm":
        cmd += ["--cache-dir", str(warm_cache_dir(args))]
    print(f"profiling {contender} ({args.profile_steps} steps after {args.profile_skip}) ...", flush=True)
    out = subprocess.run(cmd, env=env(contender == "textbrewer", args.threads), capture_output=True, text=True)
    if out.returncode or not tmp.is_file():
        print(out.stderr[-4000:], file=sys.stderr)
        sys.exit(f"profiling {contender} failed")
    record = json.loads(tmp.read_text())
    record["settings"] = {"epochs": args.epochs, "max_train_samples": args.max_train_samples, "seed": args.seed,
                          "threads": args.threads}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"profile-{contender}{suffix(args)}.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(work, ignore_errors=True)


# ---- the table ---------------------------------------------------------------------------------

def stored(args) -> dict[str, list[dict]]:
    """Stored runs of these settings, per contender, in round order."""
    runs: dict[str, list[dict]] = {c: [] for c in CONTENDERS}
    pattern = re.compile(rf"(?P<c>{'|'.join(map(re.escape, CONTENDERS))})-r(?P<r>\d+){re.escape(suffix(args))}\.json")
    for path in sorted(RESULTS.glob("*.json")) if RESULTS.is_dir() else []:
        match = pattern.fullmatch(path.name)
        if match:
            runs[match["c"]].append(json.loads(path.read_text()))
    for records in runs.values():
        records.sort(key=lambda r: r["round"])
    return runs


CACHE_LINE = re.compile(r"teacher-output cache (?P<status>\w+) \(.*; (?P<mb>[\d.]+) MB on disk, .*\) in (?P<s>[\d.]+) s")


def cache_events(record: dict) -> list[dict]:
    """lmdistill's own log lines about the teacher-output cache: [{status, mb, s}] (built / reused / ...)."""
    events = []
    for line in record.get("detail", {}).get("log", []):
        match = CACHE_LINE.search(line)
        if match:
            events.append({"status": match["status"], "mb": float(match["mb"]), "s": float(match["s"])})
    return events


def _med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summary(records: list[dict]) -> dict | None:
    if not records:
        return None
    n = records[0]["train_examples"] * records[0]["settings"]["epochs"]
    epoch = [r["timing"]["epoch_median_s"] for r in records]
    train = [r["timing"]["train_s"] for r in records]
    setup = [r["timing"]["setup_s"] for r in records]
    return {"runs": len(records), "setup": _med(setup), "epoch": _med(epoch), "epoch_range": (min(epoch), max(epoch)),
            "first_epoch": _med([r["timing"]["epochs_s"][0] for r in records]),
            "train": _med(train), "rate": _med([n / t for t in train]),
            "total": _med([s + t for s, t in zip(setup, train)]), "rate_total": _med([n / (s + t) for s, t in zip(setup, train)]),
            "accuracy": _med([r["accuracy"] for r in records]),
            "accuracies": sorted({round(r["accuracy"] * 100, 2) for r in records}),
            "rss": _med([r.get("peak_rss_mb") for r in records])}


def fmt(value, digits=1, unit=""):
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def table(args) -> str:
    runs = stored(args)
    stats = {c: summary(runs[c]) for c in CONTENDERS}
    limit = stats["student-only"]
    epochs = args.epochs
    lines = [f"### Training throughput: MiniLM-L6 teacher → 3-layer student, SST-2, {epochs} epoch{'s' if epochs != 1 else ''}", "",
             "| contender | runs | setup (s) | epoch (s), median [range] | ÷ student-only epoch | epoch 1 (s) | "
             f"train {epochs} ep. (s) | examples/s | setup + train (s) | dev acc (×100) | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in CONTENDERS:
        s = stats[c]
        if s is None:
            lines.append(f"| {LABELS[c]} | 0 | | | | | | | | | |")
            continue
        ratio = s["epoch"] / limit["epoch"] if limit else None
        acc = "/".join(f"{a:.2f}" for a in s["accuracies"])
        lines.append(f"| {LABELS[c]} | {s['runs']} | {fmt(s['setup'])} | {fmt(s['epoch'])} "
                     f"[{s['epoch_range'][0]:.1f}–{s['epoch_range'][1]:.1f}] | {fmt(ratio, 2, '×')} | "
                     f"{fmt(s['first_epoch'])} | {fmt(s['train'])} | {fmt(s['rate'], 0)} | {fmt(s['total'])} | "
                     f"{acc} | {fmt(s['rss'], 0)} |")
    cache_notes = []
    for c, wanted in (("lmdistill-cold", "built"), ("lmdistill-warm", "reused"), ("lmdistill-nocache", None)):
        events = [e for r in runs[c] for e in cache_events(r)]
        if wanted is None:
            if events:
                cache_notes.append(f"WARNING: {LABELS[c]} logged cache use: {events}")
            continue
        wrong = [e["status"] for e in events if e["status"] != wanted]
        if len(events) < len(runs[c]) or wrong:
            cache_notes.append(f"WARNING: {LABELS[c]}: expected the cache to be {wanted} in every run, "
                               f"got {[e['status'] for e in events] or 'no cache log line'}")
        elif events:
            cache_notes.append(f"{LABELS[c]}: cache {wanted} in {_med([e['s'] for e in events]):.1f} s "
                               f"({events[0]['mb']:.0f} MB on disk)")
    if cache_notes:
        lines += ["", "Cache: " + "; ".join(cache_notes) + "."]
    lines += ["", "Targets:"]
    warm, tb, fin = stats["lmdistill-warm"], stats["textbrewer"], stats["lmdistill-finetune"]
    if warm and limit:
        r = warm["epoch"] / limit["epoch"]
        also = f"; against lmdistill's own `finetune` epoch: {warm['epoch'] / fin['epoch']:.2f}×" if fin else ""
        lines.append(f"- warm-cache KD epoch / student-only epoch = {r:.2f}× (target ≤ {TARGET_RATIO}: "
                     f"{'met' if r <= TARGET_RATIO else 'MISSED'}){also}.")
    else:
        lines.append("- warm-cache KD epoch / student-only epoch: not measured yet.")
    if tb:
        for c, what in (("lmdistill-warm", "warm"), ("lmdistill-nocache", "no cache"), ("lmdistill-cold", "cold")):
            s = stats[c]
            if not s:
                lines.append(f"- lmdistill ({what}) / TextBrewer throughput: not measured yet.")
                continue
            over_train = s["rate"] / tb["rate"]
            over_total = s["rate_total"] / tb["rate_total"]
            lines.append(f"- lmdistill ({what}) / TextBrewer throughput over the {epochs} epoch{'s' if epochs != 1 else ''} = {over_train:.2f}× "
                         f"(training loop), {over_total:.2f}× (setup + training{', cache build included' if c == 'lmdistill-cold' else ''}) "
                         f"(target ≥ {TARGET_SPEEDUP}×: {'met' if over_train >= TARGET_SPEEDUP else 'MISSED'}).")
    kd = {c: stats[c]["accuracy"] for c in KD if stats[c]}
    if len(kd) >= 2:
        spread = (max(kd.values()) - min(kd.values())) * 100
        verdict = ("agree within noise" if spread <= ACCURACY_NOISE else
                   "DO NOT AGREE: the comparison is void until this is explained")
        lines.append(f"- Dev accuracy of the KD contenders (same objective): {min(kd.values()) * 100:.2f}–"
                     f"{max(kd.values()) * 100:.2f}, spread {spread:.2f} points (noise bound {ACCURACY_NOISE}): {verdict}.")
    check = RESULTS / "loss-check.json"
    if check.is_file():
        c = json.loads(check.read_text())
        parts = []
        if "lmdistill" in c:
            parts.append(f"lmdistill `lwd`'s stage loss differs from the plain loop's by {abs(c['lmdistill']['loss_minus_offset_diff']):.1e}, "
                         f"its gradient by {c['lmdistill']['max_grad_diff_rel']:.1e} (relative)")
        if "textbrewer" in c:
            parts.append(f"TextBrewer's loss = the plain loop's + {c['textbrewer']['expected_offset']:.3f} (8 × the "
                         f"teacher's entropy at T = 4) to {abs(c['textbrewer']['loss_minus_offset_diff']):.1e}, its gradient "
                         f"equal to {c['textbrewer']['max_grad_diff_rel']:.1e} (relative)")
        lines.append(f"- Same objective, checked on one real batch (`--check-loss`, dropout off): {'; '.join(parts)}.")
    profiles = sorted(RESULTS.glob(f"profile-*{suffix(args)}.json")) if RESULTS.is_dir() else []
    for path in profiles:
        record = json.loads(path.read_text())
        if record.get("settings", {}) != {"epochs": args.epochs, "max_train_samples": args.max_train_samples,
                                          "seed": args.seed, "threads": args.threads}:
            continue
        p = record["profile"]
        lines += ["", f"Profile of {LABELS.get(record['contender'], record['contender'])}: {p['steps']} steps after "
                  f"{p['skip']}, {p['ms_per_step']:.0f} ms per step under cProfile (top entries by cumulative time):", "",
                  "| function | calls/step | cumulative ms/step | % of step |", "|---|---|---|---|"]
        rows = [r for r in p["by_cumulative"] if r["function"].rsplit("(", 1)[-1].rstrip(")") not in WRAPPERS]
        for row in rows[:args.profile_rows]:
            lines.append(f"| `{row['function']}` | {row['calls'] / p['steps']:.0f} | {row['cumtime_ms_per_step']:.1f} | "
                         f"{100 * row['cumtime_ms_per_step'] / p['ms_per_step']:.0f} |")
    any_run = next((r for rs in runs.values() for r in rs), None)
    machine = (f"{any_run['cpus']} CPUs, torch {any_run['versions']['torch']}, transformers "
               f"{any_run['versions']['transformers']}" if any_run else "?")
    teachers = sorted({Path(r["teacher"]).name for rs in runs.values() for r in rs if r.get("teacher")})
    data = f"the first {args.max_train_samples}" if args.max_train_samples else f"all {TRAIN_ROWS}"
    lines += ["", (
        f"Workload: MiniLM-L6 fine-tuned on SST-2 by lmdistill (cached; the same folder for every contender) → "
        f"its layers [0, 2, 4]; KD T = 4, alpha 0.5, + hidden MSE of student layer k vs teacher layer 2k, beta 1 "
        f"(lmdistill `lwd`; TextBrewer set to the same effective loss); batch 32, max_length 64, {data} SST-2 train "
        f"sentences, {epochs} epoch{'s' if epochs != 1 else ''}, seed {args.seed}, AdamW lr 1e-4 (wd 0.01, linear, "
        f"10% warm-up, clip 1.0), length-grouped batches for every contender, {args.threads} thread{'s' if args.threads != 1 else ''}, "
        f"one process per run ({machine}; teacher folder {', '.join(teachers) or '?'}). Medians over the runs; contenders alternate within each round. "
        "Setup: process start to the first training step (imports, models, data; for the cold cache also "
        "whatever is built before training). Epoch: the median of a run's epochs. Dev accuracy: SST-2 dev "
        "(872); one value per distinct result.")]
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------

def main() -> int:
    global RESULTS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    p.add_argument("--repeats", type=int, default=2, help="rounds (each runs every contender once)")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--max-train-samples", type=int, default=None, help="the first N train sentences (quick checks)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"])
    p.add_argument("--profile", nargs="+", choices=CONTENDERS, default=None, metavar="CONTENDER",
                   help="profile one window of steps of each (cProfile), store it; no timed runs")
    p.add_argument("--profile-steps", type=int, default=20)
    p.add_argument("--profile-skip", type=int, default=20)
    p.add_argument("--profile-rows", type=int, default=15, help="profile rows shown in the table")
    p.add_argument("--teacher", default=None, metavar="DIR",
                   help="use this teacher folder instead of lmdistill's cached fine-tuned one (development only)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where the JSON go (default %(default)s)")
    p.add_argument("--setup-textbrewer", action="store_true", help="create the TextBrewer venv, nothing else")
    p.add_argument("--check-loss", action="store_true",
                   help="compare lmdistill's, TextBrewer's and the plain loop's loss and gradients on one batch")
    p.add_argument("--dry-run", action="store_true", help="print the plan (stored / to run); run nothing")
    p.add_argument("--table-only", action="store_true", help="print the table from the stored JSON; run nothing")
    p.add_argument("--markdown", type=Path, default=None, metavar="FILE", help="also write the table to FILE")
    args = p.parse_args()
    RESULTS = args.results.resolve()
    if args.max_train_samples and args.max_train_samples >= TRAIN_ROWS:
        args.max_train_samples = None
    failed = 0
    if args.setup_textbrewer:
        setup_textbrewer()
        return 0
    if args.dry_run:
        for round_ in range(1, args.repeats + 1):
            for c in args.contenders:
                name = key(c, round_, args)
                print(f"  {'stored' if (RESULTS / f'{name}.json').is_file() else 'to run':<7} {name}")
        return 0
    if not args.table_only:
        cached = ("lmdistill-cold", "lmdistill-warm")
        if not cache_available() and any(c in cached for c in (args.profile or args.contenders)):
            print("this lmdistill has no teacher-output cache (src/lmdistill/cache*): skipping "
                  + ", ".join(c for c in cached if c in (args.profile or args.contenders)), file=sys.stderr)
            args.contenders = [c for c in args.contenders if c not in cached]
            args.profile = [c for c in args.profile if c not in cached] if args.profile else None
        python = {"main": sys.executable}
        if args.check_loss or "textbrewer" in (args.profile or args.contenders):
            python["textbrewer"] = str(setup_textbrewer())
        teacher = args.teacher or prepare_teacher(args)
        print(f"teacher: {teacher}", flush=True)
        if args.check_loss:
            check_loss(args, teacher, python)
            return 0
        if "lmdistill-warm" in (args.profile or args.contenders):
            build_warm_cache(args, teacher)
        if args.profile:
            for c in args.profile:
                run_profile(c, args, teacher, python)
        else:
            for round_ in range(1, args.repeats + 1):
                for c in args.contenders:
                    if (RESULTS / f"{key(c, round_, args)}.json").is_file():
                        continue
                    failed += not run_one(c, round_, args, teacher, python)
    text = table(args)
    print("\n" + text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
        print(f"\ntable written to {args.markdown}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
