"""Kill -9 anywhere, resume, and get the student an uninterrupted run gives, bit for bit (CPU, fixed seed).

The tiny BERT teacher has dropout and no task head, so every run fine-tunes it first (cached under
the run's own cache folder), then distils it with kd into 2 of its 4 layers; both stages run 2
epochs with group_by_length and a checkpoint every 3 steps, so kills land inside epoch 1 as well as
epoch 0. `LMDISTILL_KILL_TRIALS=N` draws N kill points per kind instead of the CI's few (the sweep
quoted in the closing note of issue 9).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from conftest import DATA, REPO, sst2_config

TESTS = Path(__file__).resolve().parent
SWEEP = int(os.environ.get("LMDISTILL_KILL_TRIALS", "0"))


def kill_config(teacher: Path, recipe: dict | None = None) -> dict:
    config = sst2_config(teacher, Path("unset"), Path("unset"))
    config["teacher"]["epochs"] = 2
    config["training"].update({"epochs": 2, "batch_size": 16, "save_steps": 3, "save_total_limit": 2,
                               "num_threads": 1, "group_by_length": True})
    config["bench"]["enabled"] = False
    if recipe:
        config["recipe"] = recipe
    return config


def single_threaded_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "MPLBACKEND": "Agg",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(TESTS), os.environ.get("PYTHONPATH", "")])}


def run_driver(tmp_path: Path, config: dict, per_kind: dict, double: int = 0, seed: int = 0) -> dict:
    spec = {"config": config, "workdir": str(tmp_path / "work"), "seed": seed, "per_kind": per_kind,
            "double": double}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = tmp_path / "result.json"
    subprocess.run([sys.executable, str(TESTS / "kill_driver.py"), str(tmp_path / "spec.json"), str(result)],
                   check=True, env=single_threaded_env(), timeout=3600)
    return json.loads(result.read_text())


def record(name: str, result: dict) -> None:
    """With LMDISTILL_KILL_REPORT=FILE, add this test's figures to FILE (the sweep's JSON)."""
    path = os.environ.get("LMDISTILL_KILL_REPORT")
    if not path:
        return
    figures = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    trials = result["trials"]
    figures[name] = {
        "trials": len(trials), "kills": sum(sum(t["killed"]) for t in trials),
        "killed_twice": sum(len(t["kills"]) > 1 for t in trials),
        "identical": sum(bool(t.get("identical")) for t in trials),
        "max_abs_diff": max((t.get("max_abs_diff", float("inf")) for t in trials), default=0.0),
        "points": sorted({k[0] for t in trials for k in t["kills"]}), "hits_uninterrupted": result["counts"],
        "kill_points": [t["kills"] for t in trials],
    }
    Path(path).write_text(json.dumps(figures, indent=1))


def check_trials(result: dict) -> None:
    for trial in result["trials"]:
        where = f"{trial['kills']} (log: {trial['log']})"
        assert trial["killed"][0], f"kill point never reached: {where}"
        assert trial["resume_status"] == 0, f"resume failed: {where}"
        assert trial["identical"], f"student differs by {trial['max_abs_diff']} after {where}"
        assert trial["same_stage_summaries"], f"{where}: {trial.get('summary_diff')}"  # loss curves, train_loss
        assert trial["same_scores"], where
        assert trial["leftovers"] == [], f"{trial['leftovers']} left after {where}"


def test_kill_anywhere_resumes_to_the_same_student(tiny_bert_dir, tmp_path):
    """Seeded random kill points of every kind; each killed run, resumed, gives identical weights."""
    # CI: one seeded kill point of every kind (15 trials); the sweep (LMDISTILL_KILL_TRIALS=N) draws more.
    weights = {"step@teacher": 3, "step@student": 4, "checkpoint-weights": 2, "checkpoint-optimizer": 2,
               "checkpoint-publish": 2, "checkpoint-rotate": 1, "stage-state": 2, "stage-done": 2,
               "teacher-cache": 1, "teacher-cached": 1, "cache-batch": 1, "cache-publish": 1, "student-save": 1,
               "report": 2}
    n = SWEEP
    per_kind = {kind: w * n if n else 1 for kind, w in weights.items()}
    result = run_driver(tmp_path, kill_config(tiny_bert_dir), per_kind, double=2 * n if n else 1)
    counts = result["counts"]
    # The plan covered what it claims: both stages, several saves, two epochs each (8 steps per stage).
    assert counts["step"] == 16 and result["student_steps"] == 8 and counts["checkpoint-publish"] == 6
    assert len(result["trials"]) >= (22 * n if n else 15) and counts["cache-publish"] >= 1
    record("kd-sst2", result)
    check_trials(result)
    summary = {"trials": len(result["trials"]), "kills": sum(sum(t["killed"]) for t in result["trials"]),
               "identical": sum(t["identical"] for t in result["trials"])}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    print("kill/resume:", summary)


@pytest.mark.skipif(not SWEEP, reason="the multi-stage sweep runs with LMDISTILL_KILL_TRIALS=N")
def test_kill_anywhere_in_a_four_stage_recipe(tiny_bert_dir, tmp_path):
    """TED: a teacher-side stage, frozen backbones, extra modules saved beside the student."""
    ted = {"name": "ted", "student_filter_interval": 1, "teacher_filter_interval": 2}
    n = SWEEP
    per_kind = {"step@teacher": n, "step@student": 3 * n, "checkpoint-publish": 2 * n, "checkpoint-weights": n,
                "stage-state": 2 * n, "stage-done": 2 * n, "extras-save": n, "student-save": n, "report": n}
    result = run_driver(tmp_path, kill_config(tiny_bert_dir, ted), per_kind, double=n, seed=1)
    record("ted-sst2", result)
    check_trials(result)
    print("kill/resume (ted):", len(result["trials"]), "trials")


def test_kill_masked_lm(tiny_bert_dir, tmp_path):
    """MLM: the collator masks at random and the tied LM head is stored once in each checkpoint. Both
    used to break resume (different masks and dropout draws; a crash loading the tied weights)."""
    config = kill_config(tiny_bert_dir)
    config["task"] = {"kind": "language-modeling", "train": str(DATA / "wikitext2" / "train.txt"),
                      "eval": str(DATA / "wikitext2" / "eval.txt"), "block_size": 32, "max_train_samples": 32,
                      "max_eval_samples": 6}
    n = SWEEP
    plan = {"step@teacher": n, "step@student": 2 * n, "checkpoint-publish": n} if n else {
        "step@teacher": 1, "step@student": 1}  # CI: one kill in each stage
    result = run_driver(tmp_path, config, plan, seed=2)
    assert result["counts"]["step"] > result["student_steps"] >= 4  # kills landed in both stages
    record("kd-mlm-wikitext2", result)
    check_trials(result)


@pytest.mark.skipif(not SWEEP, reason="the sweep runs with LMDISTILL_KILL_TRIALS=N")
def test_kill_anywhere_with_random_sampling(tiny_bert_dir, tmp_path):
    """Plain random sampling (accelerate's seeded sampler) instead of group_by_length."""
    config = kill_config(tiny_bert_dir)
    config["training"]["group_by_length"] = False
    n = SWEEP
    result = run_driver(tmp_path, config, {"step@teacher": 2 * n, "step@student": 3 * n, "checkpoint-publish": n},
                        double=n, seed=3)
    record("kd-sst2-random-sampling", result)
    check_trials(result)


def test_kill_through_the_cli(tiny_bert_dir, tmp_path):
    """The environment hook, through `python -m lmdistill.cli run` and `--resume`, as a user would."""
    config = kill_config(tiny_bert_dir)
    env = single_threaded_env()
    students = {}
    for name, kill in [("plain", None), ("killed", "checkpoint-publish:5")]:
        config.update(output=str(tmp_path / name), cache_dir=str(tmp_path / f"cache-{name}"))
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "lmdistill.cli", "run", str(path)]
        first = subprocess.run(command, env={**env, "LMDISTILL_TEST_KILL_AT": kill} if kill else env,
                               capture_output=True, text=True, timeout=600)
        if kill:
            assert first.returncode == -9, first.stderr[-2000:]
            assert not (tmp_path / name / "student").exists()
            first = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
        assert first.returncode == 0, first.stderr[-2000:]
        students[name] = load_file(str(tmp_path / name / "student" / "model.safetensors"))
    assert students["plain"].keys() == students["killed"].keys()
    for key, value in students["plain"].items():
        assert value.equal(students["killed"][key]), key
