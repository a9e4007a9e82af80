"""Kill runs with SIGKILL at seeded random points, resume them, compare with an uninterrupted run.

Used by test_kill_resume.py: `python kill_driver.py SPEC.json RESULT.json`. The driver imports
lmdistill once and forks one child per run, so a trial costs the run itself, not a Python start.
It computes nothing in the parent (a forked child of a process that ran torch's thread pool can
hang), and every run is single-threaded (OMP_NUM_THREADS=1, training.num_threads=1), which is what
makes CPU results bit-reproducible.

SPEC: {"config": experiment dict (output and cache_dir are set per run), "workdir": folder,
       "seed": int, "per_kind": {kind: trials}, "double": number of trials killed twice}
RESULT: {"counts": hits per kill point in the uninterrupted run, "trials": [...]}
"""

from __future__ import annotations

import copy
import json
import os
import random
import sys
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file

from lmdistill import killpoint
from lmdistill.api import distill

# Where a run can die: between optimizer steps (after the backward pass) in the teacher's fine-tuning
# or in a student stage, inside each part of a checkpoint save, around a stage's result, while the
# fine-tuned teacher is cached, during the teacher-output cache pass and while its fields are
# published, while the student and extras are saved, between report files.
KINDS = ["step@teacher", "step@student", "checkpoint-weights", "checkpoint-optimizer", "checkpoint-publish",
         "checkpoint-rotate", "stage-state", "stage-done", "teacher-cache", "teacher-cached", "cache-batch",
         "cache-publish", "student-save", "extras-save", "report"]


def run(config: dict, resume: bool, kill: tuple[str, int] | None, log: Path) -> int:
    """One run in a forked child; returns its wait status (SIGKILL: os.WIFSIGNALED and WTERMSIG 9)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            with open(log, "a") as handle:
                os.dup2(handle.fileno(), 2)
            killpoint.arm(*kill) if kill else killpoint.arm("*")
            distill(config, resume=resume)
            if not kill:
                Path(config["output"], "killpoint-hits.json").write_text(json.dumps(killpoint.hits))
        except BaseException:  # noqa: BLE001 - the child reports any failure through its exit status
            traceback.print_exc()
            code = 1
        sys.stderr.flush()
        os._exit(code)
    return os.waitpid(pid, 0)[1]


def configured(base: dict, folder: Path) -> dict:
    config = copy.deepcopy(base)
    config["output"], config["cache_dir"] = str(folder / "out"), str(folder / "cache")
    return config


def plan(counts: dict, teacher_steps: int, per_kind: dict, double: int, rng: random.Random) -> list:
    """Seeded random kill points: for each kind, `per_kind[kind]` hit numbers drawn without repeats
    from the hits an uninterrupted run makes; `double` trials are killed again while resuming."""
    ranges = {"step@teacher": ("step", 1, teacher_steps),
              "step@student": ("step", teacher_steps + 1, counts.get("step", 0))}
    trials = []
    for kind, wanted in per_kind.items():
        point, low, high = ranges.get(kind, (kind, 1, counts.get(kind, 0)))
        choices = list(range(low, high + 1))
        for n in sorted(rng.sample(choices, min(wanted, len(choices)))):
            trials.append([[point, n]])
    for _ in range(double):
        first, second = rng.choice(trials)[0], rng.choice(trials)[0]
        trials.append([first, [second[0], rng.randint(1, 3)]])  # a few hits into the resumed run
    return trials


def leftovers(folder: Path) -> list[str]:
    """What interrupted writes left behind: temporary, trash, work folders and unfinished checkpoints."""
    found = []
    for path in folder.rglob("*"):
        if path.name.startswith((".tmp-", ".old-", ".del-")) or path.name.endswith(".work") or (
                path.name.startswith("checkpoint-") and path.is_dir()):
            found.append(str(path.relative_to(folder)))
    return sorted(found)


def summaries(report: dict) -> list[dict]:
    """Stage summaries without what legitimately differs after a resume: runtime, where it resumed,
    and of the teacher-output cache its folder, build time and whether this process built it (its
    key, the folder's name, and its fields must be the same)."""
    kept = []
    for stage in report["stages"]:
        stage = {k: v for k, v in stage.items() if k not in ("train_runtime_s", "resumed_from_step")}
        if "teacher_cache" in stage:
            cache = stage["teacher_cache"]
            stage["teacher_cache"] = (Path(cache["folder"]).name, cache["fields"])
        kept.append(stage)
    return kept


def compare(a: dict, b: dict) -> tuple[bool, float]:
    if a.keys() != b.keys():
        return False, float("inf")
    diff = max((x.double() - b[k].double()).abs().max().item() for k, x in a.items())
    return all(torch.equal(x, b[k]) for k, x in a.items()), diff


def main(spec_path: str, result_path: str) -> None:
    # What every child would import or scan again: the report's plotting, the Trainer's TensorBoard
    # writer, and (gc.freeze) the garbage collector's walk over the objects imported here.
    import gc

    import matplotlib.pyplot  # noqa: F401
    import torch.utils.tensorboard  # noqa: F401

    gc.freeze()
    spec = json.loads(Path(spec_path).read_text())
    work = Path(spec["workdir"])
    base_dir = work / "uninterrupted"
    base_dir.mkdir(parents=True)
    status = run(configured(spec["config"], base_dir), False, None, work / "uninterrupted.log")
    if status != 0:
        raise SystemExit(f"the uninterrupted run failed; see {work / 'uninterrupted.log'}")
    counts = json.loads((base_dir / "out" / "killpoint-hits.json").read_text())
    report = json.loads((base_dir / "out" / "report.json").read_text())
    student_steps = sum(stage["steps"] for stage in report["stages"])
    reference = load_file(str(base_dir / "out" / "student" / "model.safetensors"))
    rng = random.Random(spec["seed"])
    results = []
    for index, kills in enumerate(plan(counts, counts.get("step", 0) - student_steps, spec["per_kind"],
                                       spec.get("double", 0), rng)):
        folder = work / f"trial-{index:03d}"
        config, log = configured(spec["config"], folder), folder / "log.txt"
        folder.mkdir(parents=True)
        statuses = [run(config, False, tuple(kills[0]), log)]
        for kill in kills[1:]:
            statuses.append(run(config, True, tuple(kill), log))
        statuses.append(run(config, True, None, log))
        killed = [os.WIFSIGNALED(s) and os.WTERMSIG(s) == 9 for s in statuses[:-1]]
        entry = {"kills": kills, "killed": killed, "resume_status": statuses[-1], "log": str(log)}
        student = Path(config["output"]) / "student" / "model.safetensors"
        if statuses[-1] == 0 and student.is_file():
            entry["identical"], entry["max_abs_diff"] = compare(reference, load_file(str(student)))
            resumed = json.loads((Path(config["output"]) / "report.json").read_text())
            entry["same_stage_summaries"] = summaries(resumed) == summaries(report)
            if not entry["same_stage_summaries"]:  # say what differs
                entry["summary_diff"] = [
                    {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
                    for a, b in zip(summaries(resumed), summaries(report))]
            entry["same_scores"] = (resumed["student"]["score"], resumed["teacher"]["score"]) == (
                report["student"]["score"], report["teacher"]["score"])
        entry["leftovers"] = leftovers(folder)
        results.append(entry)
        Path(result_path).write_text(json.dumps({"counts": counts, "student_steps": student_steps,
                                                 "trials": results}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
