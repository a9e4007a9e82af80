"""One contender of the throughput benchmark, in its own process (bench_throughput.py starts it).

    python benchmarks/throughput_worker.py CONTENDER --teacher DIR --out FILE.json [--epochs E]
        [--max-train-samples N] [--seed S] [--threads T] [--work DIR] [--cache-dir DIR]
        [--profile-steps K --profile-skip J]

CONTENDER is one of CONTENDERS below; `prepare` fine-tunes (or finds) the cached teacher and prints
its folder. The file imports only torch and transformers at the top: it also runs in the TextBrewer
virtual environment, which has no lmdistill. lmdistill and textbrewer are imported by their own
contender only.

What every contender does, so that the loops differ only in what they are meant to compare:
  data       data/sst2/train.tsv (first N rows), tokenized by the teacher's tokenizer, truncated to 64
             tokens; labels mapped by the teacher's label2id; padded per batch (DataCollatorWithPadding);
             batches of 32 drawn by transformers' LengthGroupedSampler, as lmdistill's default
             `group_by_length: true` does (same amount of padding for everyone); no worker processes.
  student    the teacher's layers [0, 2, 4] with their weights (a deep copy of the fine-tuned teacher).
  optimizer  torch AdamW (fused, as transformers 5's Trainer picks with torch >= 2.8), lr 1e-4, weight
             decay 0.01 on every weight except biases and LayerNorms (Trainer.get_decay_parameter_names),
             linear schedule with ceil(0.1 * steps) warm-up steps, gradient norm clipped to 1.0.
  loss (KD)  0.5 * T^2 * KL(p_t || p_s) at T = 4 + 0.5 * CE(gold) + mean over the 3 pairs (student
             layer k, teacher layer 2k) of the masked hidden-state MSE: lmdistill's `lwd` recipe.
  timing     wall clock; setup = process start to the first training step (imports, loading, data,
             cache building when it happens before training), then each epoch; evaluation after.
  accuracy   SST-2 dev (872 sentences), batch 64, argmax of the student's logits.
"""

from __future__ import annotations

import time

PROCESS_START = time.time()

import argparse  # noqa: E402
import copy  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "data" / "sst2" / "train.tsv"
DEV = REPO / "data" / "sst2" / "dev.tsv"
MAX_LENGTH = 64
BATCH_SIZE = 32
EVAL_BATCH_SIZE = 64
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.01
WARMUP_RATIO = 0.1
MAX_GRAD_NORM = 1.0
STUDENT_LAYERS = [0, 2, 4]
TEMPERATURE = 4.0
ALPHA = 0.5  # weight of the soft (teacher) term; 1 - ALPHA on the gold labels
BETA = 1.0  # weight of the mean hidden-state MSE
LAYER_PAIRS = [(1, 2), (2, 4), (3, 6)]  # (student, teacher) in hidden_states numbering: lwd's uniform map

CONTENDERS = ("student-only", "lmdistill-finetune", "plain-kd", "textbrewer",
              "lmdistill-nocache", "lmdistill-cold", "lmdistill-warm")


class Stop(Exception):
    """Ends a profiled run after its profiled steps."""


class Clock:
    """Wall-clock marks of one run: epoch starts and ends, and an optional cProfile window of steps
    [skip, skip + steps) counted over the whole run."""

    def __init__(self, profile_steps: int = 0, profile_skip: int = 10):
        self.epoch_starts: list[float] = []
        self.epoch_ends: list[float] = []
        self.step = 0
        self.profile_steps, self.profile_skip = profile_steps, profile_skip
        self.profiler = None
        self.profile_window: tuple[float, float] | None = None

    @staticmethod
    def now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.time()

    def epoch_begin(self) -> None:
        self.epoch_starts.append(self.now())

    def epoch_end(self) -> None:
        self.epoch_ends.append(self.now())

    def step_begin(self) -> bool:
        """Call before each optimisation step. Returns False when a profiled run should stop."""
        if self.profile_steps:
            import cProfile

            if self.step == self.profile_skip:
                self.profiler = cProfile.Profile()
                self.profile_window = (self.now(), 0.0)
                self.profiler.enable()
            elif self.step == self.profile_skip + self.profile_steps:
                self.profiler.disable()
                self.profile_window = (self.profile_window[0], self.now())
                return False
        self.step += 1
        return True

    def profile_entries(self, top: int = 30) -> dict:
        """The profiled window as {steps, ms_per_step, entries: [...]}, top entries by cumulative time."""
        import pstats

        if self.profiler is None or not self.profile_window or not self.profile_window[1]:
            return {}
        stats = pstats.Stats(self.profiler)
        rows = []
        for (filename, line, name), (_, ncalls, tottime, cumtime, _) in stats.stats.items():
            rows.append({"function": f"{_short(filename)}:{line}({name})", "calls": ncalls,
                         "tottime_ms_per_step": 1000 * tottime / self.profile_steps,
                         "cumtime_ms_per_step": 1000 * cumtime / self.profile_steps})
        wall = self.profile_window[1] - self.profile_window[0]
        by_cum = sorted(rows, key=lambda r: -r["cumtime_ms_per_step"])[:top]
        by_tot = sorted(rows, key=lambda r: -r["tottime_ms_per_step"])[:top]
        return {"steps": self.profile_steps, "skip": self.profile_skip, "ms_per_step": 1000 * wall / self.profile_steps,
                "by_cumulative": by_cum, "by_own_time": by_tot}


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/src/", "/benchmarks/", "/lib/python"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# ---- data, models, optimizer: shared by the hand-written loops and TextBrewer -----------------

def read_tsv(path: Path, limit: int | None = None) -> tuple[list[str], list[str]]:
    """Sentences and labels of an SST-2 file (QUOTE_NONE: the sentences hold bare quotes)."""
    sentences, labels = [], []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        text, label = header.index("sentence"), header.index("label")
        for row in reader:
            if limit is not None and len(sentences) >= limit:
                break
            sentences.append(row[text])
            labels.append(row[label])
    return sentences, labels


def encode(path: Path, tokenizer, label2id: dict[str, int], limit: int | None = None) -> list[dict]:
    sentences, labels = read_tsv(path, limit)
    encoded = tokenizer(sentences, truncation=True, max_length=MAX_LENGTH)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    return [{**{k: encoded[k][i] for k in keys}, "labels": label2id[labels[i]]} for i in range(len(sentences))]


def train_loader(examples: list[dict], tokenizer) -> DataLoader:
    from transformers.trainer_pt_utils import LengthGroupedSampler

    sampler = LengthGroupedSampler(BATCH_SIZE, lengths=[len(e["input_ids"]) for e in examples])
    return DataLoader(examples, batch_size=BATCH_SIZE, sampler=sampler,
                      collate_fn=DataCollatorWithPadding(tokenizer, return_tensors="pt"))


def load_teacher(folder: str) -> nn.Module:
    teacher = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def layer_subset(teacher: nn.Module, keep: list[int]) -> nn.Module:
    """A deep copy of the teacher with only the encoder layers `keep` (BERT layout)."""
    student = copy.deepcopy(teacher)
    student.bert.encoder.layer = nn.ModuleList([student.bert.encoder.layer[i] for i in keep])
    student.config.num_hidden_layers = len(keep)
    student.requires_grad_(True)
    student.train()
    return student


def optimizer_and_schedule(model: nn.Module, steps: int):
    decay = set(transformers.Trainer.get_decay_parameter_names(None, model))
    groups = [
        {"params": [p for n, p in model.named_parameters() if n in decay and p.requires_grad],
         "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in model.named_parameters() if n not in decay and p.requires_grad],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=LEARNING_RATE, fused=True)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, math.ceil(WARMUP_RATIO * steps), steps)
    return optimizer, schedule


@torch.no_grad()
def dev_accuracy(model: nn.Module, tokenizer, label2id: dict[str, int]) -> float:
    examples = encode(DEV, tokenizer, label2id)
    loader = DataLoader(examples, batch_size=EVAL_BATCH_SIZE, collate_fn=DataCollatorWithPadding(tokenizer))
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    for batch in loader:
        gold = batch.pop("labels").to(device)
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        correct += int((logits.argmax(-1) == gold).sum())
    return correct / len(examples)


def kd_loss(student_out, teacher_out, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """lwd's objective, written out: alpha T^2 KL + (1 - alpha) CE + beta mean_k masked MSE."""
    t = TEMPERATURE
    log_p_s = F.log_softmax(student_out.logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_out.logits.float() / t, dim=-1)
    soft = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean() * t * t
    weight = mask.unsqueeze(-1).float()
    hidden = 0.0
    for s, k in LAYER_PAIRS:
        diff = (student_out.hidden_states[s] - teacher_out.hidden_states[k]).pow(2) * weight
        hidden = hidden + diff.sum() / (weight.sum() * diff.shape[-1])
    hidden = hidden / len(LAYER_PAIRS)
    loss = ALPHA * soft + (1 - ALPHA) * student_out.loss + BETA * hidden
    return loss, {"kd": soft.detach(), "task": student_out.loss.detach(), "hidden": hidden.detach()}


# ---- contenders ----------------------------------------------------------------------------------

def setup_plain(args):
    """Teacher, tokenizer, label map, student, data loader: what every hand-written contender builds."""
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    teacher = load_teacher(args.teacher)
    label2id = {str(k): int(v) for k, v in teacher.config.label2id.items()}
    transformers.set_seed(args.seed)
    student = layer_subset(teacher, STUDENT_LAYERS)
    loader = train_loader(encode(TRAIN, tokenizer, label2id, args.max_train_samples), tokenizer)
    return tokenizer, teacher, label2id, student, loader


def run_plain(args, clock: Clock, with_teacher: bool) -> dict:
    """The hand-written loop: student-only (CE) or KD (teacher forward under no_grad + lwd's loss)."""
    tokenizer, teacher, label2id, student, loader = setup_plain(args)
    if not with_teacher:
        del teacher
    epochs = int(args.epochs)
    optimizer, schedule = optimizer_and_schedule(student, len(loader) * epochs)
    student.train()
    sums: dict[str, torch.Tensor] = {}
    stopped = False
    for _ in range(epochs):
        clock.epoch_begin()
        for batch in loader:
            if not clock.step_begin():
                stopped = True
                break
            if with_teacher:
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                with torch.no_grad():
                    teacher_out = teacher(**inputs, output_hidden_states=True)
                student_out = student(**batch, output_hidden_states=True)
                loss, parts = kd_loss(student_out, teacher_out, batch["attention_mask"])
            else:
                loss = student(**batch).loss
                parts = {"task": loss.detach()}
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            for name, value in parts.items():  # summed on the device: no host sync per step
                sums[name] = sums.get(name, 0.0) + value
        if stopped:
            break
        clock.epoch_end()
    steps = max(clock.step, 1)
    return {"student": student, "tokenizer": tokenizer, "label2id": label2id,
            "detail": {"mean_loss_parts": {k: float(v) / steps for k, v in sums.items()}, "steps": clock.step}}


def textbrewer_adaptor(batch, outputs):
    return {"logits": outputs.logits, "hidden": outputs.hidden_states, "losses": outputs.loss,
            "inputs_mask": batch["attention_mask"]}


def textbrewer_distiller(teacher, student, work: Path):
    """TextBrewer's GeneralDistiller set to lwd's effective loss (see run_textbrewer)."""
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    train_config = TrainingConfig(device="cuda" if torch.cuda.is_available() else "cpu",
                                  output_dir=str(work / "textbrewer-out"), log_dir=str(work / "textbrewer-logs"),
                                  ckpt_frequency=1, ckpt_epoch_frequency=1)
    matches = [{"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": BETA / len(LAYER_PAIRS)}
               for s, t in LAYER_PAIRS]
    distill_config = DistillationConfig(temperature=TEMPERATURE, kd_loss_type="ce",
                                        kd_loss_weight=ALPHA * TEMPERATURE ** 2, hard_label_weight=1 - ALPHA,
                                        intermediate_matches=matches)
    distiller = GeneralDistiller(train_config=train_config, distill_config=distill_config, model_T=teacher,
                                 model_S=student, adaptor_T=textbrewer_adaptor, adaptor_S=textbrewer_adaptor)
    return distiller, matches


def run_textbrewer(args, clock: Clock) -> dict:
    """TextBrewer 0.2.1's GeneralDistiller on the same loader, optimizer, schedule and objective.

    TextBrewer's terms and how they are set to equal lwd's loss:
      kd_loss_type 'ce' is -sum p_t log p_s at temperature T, with no T^2 factor: kd_loss_weight =
        alpha * T^2 = 8 gives the same gradient as lmdistill's alpha * T^2 * KL (CE = KL + the
        teacher's entropy, a constant for the student: the loss values differ by 8 * H(p_t), not the
        gradients);
      hard_label_weight * the student's own CE ('losses' from the adaptor): 1 - alpha = 0.5;
      intermediate_matches are summed, not averaged: weight beta / 3 on each of the 3 hidden_mse
        matches (layer_T 2k, layer_S k) gives lwd's beta * mean; hidden_mse with 'inputs_mask' is the
        same masked mean as lmdistill's masked_mse.
    Its own per-step costs stay in: a `.item()` of every loss term each step (write_loss) and a
    TensorBoard log, a state_dict saved at the end of every epoch (ckpt_frequency 1).
    """
    import textbrewer

    tokenizer, teacher, label2id, student, loader = setup_plain(args)
    epochs = int(args.epochs)
    optimizer = optimizer_and_schedule(student, len(loader) * epochs)[0]
    steps = len(loader) * epochs
    distiller, matches = textbrewer_distiller(teacher, student, Path(args.work))

    # Epoch marks: TextBrewer calls `callback` after its end-of-epoch checkpoint; steps are counted
    # by wrapping train_on_batch (called once per optimisation step here).
    original = distiller.train_on_batch

    def train_on_batch(batch, extra):
        if not clock.epoch_starts or len(clock.epoch_starts) == len(clock.epoch_ends):
            clock.epoch_begin()
        if not clock.step_begin():
            raise Stop
        return original(batch, extra)

    distiller.train_on_batch = train_on_batch
    student.train()
    try:
        distiller.train(optimizer, loader, num_epochs=epochs, max_grad_norm=MAX_GRAD_NORM,
                        scheduler_class=transformers.get_linear_schedule_with_warmup,
                        scheduler_args={"num_warmup_steps": math.ceil(WARMUP_RATIO * steps),
                                        "num_training_steps": steps},
                        callback=lambda model, step: clock.epoch_end(), output_hidden_states=True,
                        batch_postprocessor=dict)  # TextBrewer wants a plain dict, not a BatchEncoding
    except Stop:
        pass
    return {"student": student, "tokenizer": tokenizer, "label2id": label2id,
            "detail": {"textbrewer": textbrewer.__version__, "steps": clock.step,
                       "distill_config": {"temperature": TEMPERATURE, "kd_loss_type": "ce",
                                          "kd_loss_weight": ALPHA * TEMPERATURE ** 2,
                                          "hard_label_weight": 1 - ALPHA, "intermediate_matches": matches}}}


def lmdistill_config(args, contender: str) -> dict:
    """The lmdistill config of a contender: the workload above, lmdistill's defaults otherwise."""
    import importlib.util

    from lmdistill.config import TrainingConfig as LmTraining

    recipe = {"name": "finetune"} if contender == "lmdistill-finetune" else {
        "name": "lwd", "temperature": TEMPERATURE, "alpha": ALPHA, "layer_map": "uniform", "beta": BETA}
    task = {"kind": "classification", "train": str(TRAIN), "eval": str(DEV), "text": "sentence", "label": "label",
            "max_length": MAX_LENGTH}
    if args.max_train_samples:
        task["max_train_samples"] = args.max_train_samples
    training = {"epochs": args.epochs, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE, "seed": args.seed,
                "weight_decay": WEIGHT_DECAY, "warmup_ratio": WARMUP_RATIO, "lr_scheduler": "linear",
                "max_grad_norm": MAX_GRAD_NORM, "num_threads": args.threads, "group_by_length": True}
    # The key alone is not enough: it landed on main before the cache (lmdistill.cache) did.
    has_cache = "cache_teacher" in LmTraining.model_fields and importlib.util.find_spec("lmdistill.cache") is not None
    if contender in ("lmdistill-cold", "lmdistill-warm"):
        if not has_cache:
            raise SystemExit(f"{contender}: this lmdistill has no training.cache_teacher (the teacher-output "
                             "cache has not landed on this branch)")
        training["cache_teacher"] = True
    elif "cache_teacher" in LmTraining.model_fields and contender != "lmdistill-finetune":
        training["cache_teacher"] = False  # before lmdistill.cache landed there is no cache either way
    config = {"teacher": {"path": args.teacher}, "student": {"layers": STUDENT_LAYERS}, "task": task,
              "recipe": recipe, "training": training, "bench": {"enabled": False},
              "output": str(Path(args.work) / "run")}
    if args.cache_dir:
        config["cache_dir"] = args.cache_dir
    return config


def run_lmdistill(args, clock: Clock, contender: str) -> dict:
    """lmdistill's own pipeline (`distill`), timed by a Trainer callback: setup is everything before
    the first epoch begins (data, models, the output cache's pass when it runs before training)."""
    import logging

    import lmdistill.trainer as lt
    from lmdistill.api import distill
    from lmdistill.config import load_config
    from transformers import TrainerCallback

    class Marks(TrainerCallback):
        def on_epoch_begin(self, targs, state, control, **kwargs):
            clock.epoch_begin()

        def on_epoch_end(self, targs, state, control, **kwargs):
            clock.epoch_end()

        def on_step_begin(self, targs, state, control, **kwargs):
            if not clock.step_begin():
                control.should_training_stop = True
                control.should_save = False

    class TimedTrainer(lt.DistillationTrainer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.add_callback(Marks())

    lt.DistillationTrainer = TimedTrainer  # run_stage looks the class up at call time
    records: list[str] = []

    class Keep(logging.Handler):  # lmdistill's own log lines (cache built / reused, sizes) go in the JSON
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("lmdistill")
    logger.setLevel(logging.INFO)
    logger.addHandler(Keep())
    transformers.utils.logging.disable_progress_bar()
    config = lmdistill_config(args, contender)
    result = distill(load_config(config), overwrite=True)
    report = result.report
    return {"accuracy": report["student"]["score"], "teacher_accuracy": report["teacher"]["score"],
            "detail": {"config": config, "log": records[-40:], "stages": report.get("stages"),
                       "steps": clock.step}}


def check_loss(args) -> dict:
    """The objectives compared on one real batch, against the hand-written `kd_loss`: lmdistill's lwd
    stage loss (when lmdistill imports here) and TextBrewer's configured loss (when textbrewer does).
    Reports each loss value, the expected offset (TextBrewer's CE = KL + the teacher's entropy, times
    kd_loss_weight) and the largest gradient difference relative to the largest gradient."""
    args.max_train_samples = BATCH_SIZE
    tokenizer, teacher, label2id, student, loader = setup_plain(args)
    student.eval()  # no dropout: the same function for every evaluation of the loss
    batch = next(iter(loader))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        teacher_out = teacher(**inputs, output_hidden_states=True)
    student_out = student(**batch, output_hidden_states=True)
    params = [p for p in student.parameters() if p.requires_grad]

    def grads(loss):
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True, allow_unused=False)])

    reference, _ = kd_loss(student_out, teacher_out, batch["attention_mask"])
    g_ref = grads(reference)
    result = {"batch": {k: list(v.shape) for k, v in batch.items()}, "plain_loss": float(reference.detach())}

    def compare(name, loss, offset=0.0):
        g = grads(loss)
        value, ref = float(loss.detach()), float(reference.detach())
        result[name] = {"loss": value, "expected_offset": offset, "loss_minus_offset_diff": value - offset - ref,
                        "max_grad_diff_rel": float((g - g_ref).abs().max() / g_ref.abs().max())}

    try:
        import textbrewer  # noqa: F401
        from textbrewer.distiller_utils import post_adaptor
    except ImportError:
        pass
    else:
        distiller, _ = textbrewer_distiller(teacher, student, Path(args.work))
        loss, _ = distiller.compute_loss(post_adaptor(textbrewer_adaptor(batch, student_out)),
                                         post_adaptor(textbrewer_adaptor(batch, teacher_out)))
        p_t = F.softmax(teacher_out.logits.float() / TEMPERATURE, dim=-1)
        entropy = float(-(p_t * p_t.log()).sum(-1).mean())
        compare("textbrewer", loss, ALPHA * TEMPERATURE ** 2 * entropy)
    try:
        from lmdistill.config import load_config
        from lmdistill.models.features import features_from_output
        from lmdistill.recipes import RecipeContext, recipe_class
        from lmdistill.tasks import build_task
    except ImportError:
        pass
    else:
        config = load_config(lmdistill_config(args, "lmdistill-nocache"))
        task = build_task(config.task, config.search_dirs)
        recipe = recipe_class("lwd")(config.recipe, RecipeContext(config=config, task=task, teacher=teacher,
                                                                  student=student))
        stage = recipe.stages()[0]
        loss, _ = stage.loss(features_from_output(student_out, batch), features_from_output(teacher_out, inputs), batch)
        compare("lmdistill", loss)
    return result


def prepare_teacher(args) -> None:
    """Fine-tune the packaged MiniLM-L6 on SST-2 as benchmarks/common.py's TEACHER does (3 epochs, lr
    5e-5, batch 32, seed 42, full train set), or find it in lmdistill's cache; print its folder."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from common import experiment
    from lmdistill.api import finetune_teacher, load_teacher as lm_load_teacher
    from lmdistill.config import load_config
    from lmdistill.models.teacher import default_cache_dir
    from lmdistill.tasks import build_task

    config = load_config(experiment("sst2", "finetune", "L3", 0, output=Path(args.work) / "unused"))
    task = build_task(config.task, config.search_dirs)
    cache_dir = default_cache_dir(config.cache_dir)
    teacher, tokenizer, source, needs_finetune = lm_load_teacher(config, task, cache_dir, False)
    folder = source
    if needs_finetune:
        transformers.set_seed(config.teacher.seed)
        _, folder, _ = finetune_teacher(teacher, tokenizer, source, config, task, cache_dir, False)
    print(json.dumps({"teacher": str(folder)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("contender", choices=(*CONTENDERS, "prepare", "check-loss"))
    p.add_argument("--teacher", help="the fine-tuned teacher folder (from `prepare`)")
    p.add_argument("--out", type=Path)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=str(REPO / "runs" / "throughput" / "work"))
    p.add_argument("--cache-dir", default=None, help="lmdistill's cache_dir (the output cache lives there)")
    p.add_argument("--profile-steps", type=int, default=0, help="profile K steps with cProfile, then stop")
    p.add_argument("--profile-skip", type=int, default=10, help="steps run before the profiled ones")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    imported = time.time()
    if args.contender == "prepare":
        prepare_teacher(args)
        return
    if args.contender == "check-loss":
        text = json.dumps(check_loss(args), indent=1)
        args.out.write_text(text) if args.out else print(text)
        return

    clock = Clock(args.profile_steps, args.profile_skip)
    if args.contender in ("student-only", "plain-kd"):
        result = run_plain(args, clock, with_teacher=args.contender == "plain-kd")
    elif args.contender == "textbrewer":
        result = run_textbrewer(args, clock)
    else:
        result = run_lmdistill(args, clock, args.contender)
    if args.profile_steps:
        record = {"contender": args.contender, "profile": clock.profile_entries()}
    else:
        if "accuracy" not in result:
            result["accuracy"] = dev_accuracy(result["student"], result["tokenizer"], result["label2id"])
        epochs = [end - start for start, end in zip(clock.epoch_starts, clock.epoch_ends)]
        if len(epochs) != args.epochs:
            raise SystemExit(f"{args.contender}: {len(epochs)} epoch marks for {args.epochs} epochs")
        record = {
            "contender": args.contender,
            "accuracy": result["accuracy"],
            "teacher_accuracy": result.get("teacher_accuracy"),
            "timing": {"import_s": imported - PROCESS_START,
                       "setup_s": clock.epoch_starts[0] - PROCESS_START,
                       "epochs_s": epochs,
                       "epoch_median_s": statistics.median(epochs),
                       "train_s": clock.epoch_ends[-1] - clock.epoch_starts[0],
                       "after_s": time.time() - clock.epoch_ends[-1]},  # saving, evaluation
            "steps": clock.step,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads(),
            "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "detail": result.get("detail", {}),
        }
    text = json.dumps(record, indent=1, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
