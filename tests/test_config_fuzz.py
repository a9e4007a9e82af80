"""Property test: any config that is wrong in one place stops with one line naming the key.

Hypothesis mutates valid, fully written-out configs (every key of every section, one base per
recipe and per student source) in one place each: a value of the wrong type, a number out of its
range, a choice that is not among the choices, an unknown key at any level, a required key or section
removed, a key moved to the wrong section, a section wrapped in itself or given as a list. Every
mutation is invalid by construction. Each case runs through `lmdistill.cli.main(["run", FILE])`, the
entry point of the command line, and must give exit status 2, exactly one `lmdistill: error:` line
that names the key, no traceback, and no output folder. Data loading is replaced by a tripwire: a
mutation that got past config validation fails the test instead of loading a model.

SPEC below is written from the README's bounds, not read from the config classes, so the test
checks the code against the documented contract. LMDISTILL_FUZZ_EXAMPLES / LMDISTILL_FUZZ_SEED run
more cases or another sequence (the default is a fixed sequence, so CI is reproducible).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from lmdistill.cli import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("LMDISTILL_FUZZ_EXAMPLES", "400"))
SEED = int(os.environ.get("LMDISTILL_FUZZ_SEED", "20240609"))
INF = math.inf
BOOLISH = {"true", "false", "yes", "no", "on", "off", "y", "n", "t", "f", "1", "0"}  # pydantic reads these as bools


def num(kind, lo, lo_incl, hi=INF, hi_incl=False, nullable=False):
    return {"kind": kind, "lo": lo, "lo_incl": lo_incl, "hi": hi, "hi_incl": hi_incl, "nullable": nullable}


def choice(*values, accepts_bool=False):
    return {"kind": "choice", "values": set(values), "accepts_bool": accepts_bool, "nullable": False}


def other(kind, nullable=False):
    return {"kind": kind, "nullable": nullable}


SEED_MAX = 2**32 - 1
SPEC = {
    "teacher.path": other("str"),
    "teacher.gguf_file": other("str", nullable=True),
    "teacher.finetune": choice("auto", "always", "never"),
    "teacher.epochs": num("float", 0, False),
    "teacher.learning_rate": num("float", 0, False, 1, True),
    "teacher.batch_size": num("int", 1, True, nullable=True),
    "teacher.seed": num("int", 0, True, SEED_MAX, True),
    "student.layers": {"kind": "intlist", "lo": 0, "nullable": True},
    "student.num_layers": num("int", 1, True, nullable=True),
    "student.config": other("dict", nullable=True),
    "student.path": other("str", nullable=True),
    "student.init_from": choice("finetuned", "pretrained"),
    "task.kind": choice("classification", "token-classification", "question-answering", "language-modeling"),
    "task.train": other("str"),
    "task.eval": other("str"),
    "task.text": other("text", nullable=True),
    "task.label": other("str", nullable=True),
    "task.format": choice("auto", "tsv", "csv", "jsonl", "json", "conll", "squad", "text", "brat"),
    "task.max_length": num("int", 8, True, nullable=True),
    "task.doc_stride": num("int", 0, True),
    "task.max_answer_tokens": num("int", 1, True),
    "task.lm_type": choice("auto", "masked", "causal"),
    "task.mlm_probability": num("float", 0, False, 1, False),
    "task.block_size": num("int", 8, True, nullable=True),
    "task.max_train_samples": num("int", 1, True, nullable=True),
    "task.max_eval_samples": num("int", 1, True, nullable=True),
    "task.hub_subset": other("str", nullable=True),
    "training.epochs": num("float", 0, False),
    "training.max_steps": other("max_steps"),
    "training.batch_size": num("int", 1, True),
    "training.eval_batch_size": num("int", 1, True),
    "training.learning_rate": num("float", 0, False, 1, True),
    "training.weight_decay": num("float", 0, True, 1, True),
    "training.warmup_ratio": num("float", 0, True, 1, False),
    "training.lr_scheduler": choice("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                    "constant_with_warmup", "inverse_sqrt"),
    "training.max_grad_norm": num("float", 0, True),
    "training.gradient_accumulation_steps": num("int", 1, True),
    "training.group_by_length": other("bool"),
    "training.seed": num("int", 0, True, SEED_MAX, True),
    "training.logging_steps": num("int", 1, True),
    "training.save_steps": num("int", 1, True),
    "training.save_total_limit": num("int", 1, True),
    "training.num_threads": num("int", 1, True, nullable=True),
    "training.bf16": other("bool"),
    "training.dataloader_num_workers": num("int", 0, True),
    "training.torch_compile": other("bool"),
    "training.cache_teacher": other("bool"),
    "training.cache_top_k": num("int", 1, True),
    "training.cache_top_k_max_temperature": num("float", 0, False),
    "training.cache_dtype": choice("float16", "bfloat16", "float32"),
    "bench.enabled": other("bool"),
    "bench.batch_sizes": {"kind": "intlist", "lo": 1, "nullable": False},
    "bench.seq_len": num("int", 1, True, nullable=True),
    "bench.repeats": num("int", 1, True),
    "bench.rounds": num("int", 1, True),
    "bench.warmup": num("int", 0, True),
    "bench.num_threads": num("int", 1, True, nullable=True),
    "bench.memory": other("bool"),
    "bench.lengths": {"kind": "intlist", "lo": 1, "nullable": True, "empty_ok": True},  # []: no cost curve
    "output": other("str"),
    "cache_dir": other("str", nullable=True),
    "recipe.name": choice("finetune", "kd", "lwd", "fcd", "ted"),
    # kd (and lwd, which extends it)
    "recipe.temperature": num("float", 0, False),
    "recipe.alpha": num("float", 0, True, 1, True),
    # lwd
    "recipe.layer_map": other("layer_map"),
    "recipe.beta": num("float", 0, True),
    "recipe.distance": choice("mse", "cosine"),
    "recipe.projection": other("bool"),
    "recipe.mask_padding": other("bool"),
    # fcd
    "recipe.alpha_task": num("float", 0, True),
    "recipe.alpha_kd": num("float", 0, True),
    "recipe.gamma": num("float", 0, True),
    "recipe.token_relation": choice("cosine", "softmax"),
    "recipe.sequence_relation": choice("position", "pooled"),
    "recipe.pooling": choice("mean", "first"),
    "recipe.use_columns": other("bool"),
    "recipe.causal": choice("auto", "true", "false", accepts_bool=True),
    # ted
    "recipe.teacher_filter_interval": num("int", 1, True, nullable=True),
    "recipe.student_filter_interval": num("int", 1, True),
    "recipe.filter_nonlinear": other("bool"),
    "recipe.alpha_kl": num("float", 0, True),
    "recipe.alpha_mse": num("float", 0, True),
    **{f"recipe.{stage}_lr": num("float", 0, False, 1, True, nullable=True)
       for stage in ("stage1_teacher", "student_finetune", "stage1_student", "stage2")},
    **{f"recipe.{stage}_epochs": num("float", 0, False, nullable=True)
       for stage in ("stage1_teacher", "student_finetune", "stage1_student", "stage2")},
}

RECIPES = {
    "finetune": {"name": "finetune"},
    "kd": {"name": "kd", "temperature": 2.0, "alpha": 0.5},
    "lwd": {"name": "lwd", "temperature": 2.0, "alpha": 0.5, "layer_map": [[1, 2], [2, 4]], "beta": 1.0,
            "distance": "mse", "projection": True, "mask_padding": True},
    "fcd": {"name": "fcd", "layer_map": "uniform", "alpha_task": 0.5, "alpha_kd": 0.5, "temperature": 4.0,
            "beta": 1.0, "gamma": 1.0, "token_relation": "cosine", "sequence_relation": "position",
            "pooling": "mean", "use_columns": False, "causal": "auto"},
    "ted": {"name": "ted", "teacher_filter_interval": 2, "student_filter_interval": 1, "filter_nonlinear": False,
            "alpha_kl": 20.0, "alpha_mse": 10.0, "temperature": 2.0, "mask_padding": True,
            **{f"{stage}_{what}": value for stage in ("stage1_teacher", "student_finetune", "stage1_student", "stage2")
               for what, value in (("lr", 1e-4), ("epochs", 1.0))}},
}
STUDENTS = [{"layers": [0, 2], "init_from": "finetuned"}, {"num_layers": 2, "init_from": "pretrained"},
            {"config": {"hidden_size": 64, "num_hidden_layers": 2}}, {"path": "some/student"}]
SECTIONS = ["teacher", "student", "task", "recipe", "training", "bench"]


def base_config(recipe: str, student: int, output: str) -> dict:
    """A valid config with every key written out."""
    return {
        "teacher": {"path": "minilm", "gguf_file": "model.gguf", "finetune": "auto", "epochs": 1.0,
                    "learning_rate": 5e-5, "batch_size": 16, "seed": 1},
        "student": copy.deepcopy(STUDENTS[student]),
        "task": {"kind": "classification", "train": "data/sst2/train.tsv", "eval": "data/sst2/dev.tsv",
                 "text": "sentence", "label": "label", "format": "auto", "max_length": 32, "doc_stride": 16,
                 "max_answer_tokens": 30, "lm_type": "auto", "mlm_probability": 0.15, "block_size": 32, "max_train_samples": 64,
                 "max_eval_samples": 32, "hub_subset": "sst2"},
        "recipe": copy.deepcopy(RECIPES[recipe]),
        "training": {"epochs": 1.0, "max_steps": -1, "batch_size": 16, "eval_batch_size": 32, "learning_rate": 1e-3,
                     "weight_decay": 0.01, "warmup_ratio": 0.1, "lr_scheduler": "linear", "max_grad_norm": 1.0,
                     "gradient_accumulation_steps": 2, "group_by_length": True, "seed": 0, "logging_steps": 5,
                     "save_steps": 50, "save_total_limit": 2, "num_threads": 2, "bf16": False,
                     "dataloader_num_workers": 0, "torch_compile": False, "cache_teacher": True, "cache_top_k": 256, "cache_top_k_max_temperature": 1.0,
                     "cache_dtype": "float16"},
        "bench": {"enabled": True, "batch_sizes": [1, 4], "seq_len": 16, "repeats": 2, "rounds": 1, "warmup": 1,
                  "num_threads": 1, "memory": False, "lengths": [128, 256]},
        "output": output,
        "cache_dir": "cache",
    }


def leaves(config: dict) -> list[str]:
    """Dotted paths of every value a user sets (student.config's own keys are the teacher's, not ours)."""
    paths = []
    for key, value in config.items():
        if isinstance(value, dict):
            paths += [f"{key}.{inner}" for inner in value]
        else:
            paths.append(key)
    return paths


def get_parent(config: dict, path: str):
    parts = path.split(".")
    node = config
    for part in parts[:-1]:
        node = node[part]
    return node, parts[-1]


# ---- invalid values, by construction --------------------------------------------------------------
letters = st.from_regex(r"[a-z]{3,10}", fullmatch=True).filter(lambda s: s not in BOOLISH and s not in {"nan", "inf"})
fractional = st.floats(-1e6, 1e6, allow_nan=False).filter(lambda x: not float(x).is_integer())


def below(spec):
    lo = spec["lo"]
    if spec["kind"] == "int":
        return st.integers(max_value=lo - 1 if spec["lo_incl"] else lo, min_value=-10**9)
    return st.floats(min_value=-1e9, max_value=lo, allow_nan=False).filter(
        lambda x: x < lo if spec["lo_incl"] else x <= lo)  # strict: -0.0 == 0 is in range


def above(spec):
    hi = spec["hi"]
    if spec["kind"] == "int":
        return st.integers(min_value=hi + 1 if spec["hi_incl"] else hi, max_value=hi + 10**9)
    return st.floats(min_value=hi, max_value=1e9, allow_nan=False).filter(
        lambda x: x > hi if spec["hi_incl"] else x >= hi)


def out_of_range(spec):
    """A value outside a numeric key's range (or not finite)."""
    kind = spec["kind"]
    if kind == "max_steps":
        return st.one_of(st.just(0), st.integers(min_value=-10**6, max_value=-2))
    if kind == "intlist":
        negative = st.lists(st.integers(max_value=spec["lo"] - 1, min_value=-100), min_size=1, max_size=3)
        return negative if spec.get("empty_ok") else st.one_of(st.just([]), negative)
    options = [below(spec)]
    if spec["hi"] != INF:
        options.append(above(spec))
    if kind == "float":
        options.append(st.sampled_from([math.nan, math.inf, -math.inf]))
    return st.one_of(options)


def wrong_type(spec):
    """A value of a type the key does not take."""
    kind = spec["kind"]
    containers = [st.lists(st.integers(0, 9), min_size=1, max_size=3), st.dictionaries(letters, st.integers(), min_size=1, max_size=2)]
    none = [] if spec["nullable"] else [st.none()]
    if kind in ("int", "max_steps"):
        return st.one_of(letters, fractional, st.booleans(), *containers, *none)
    if kind == "float":
        return st.one_of(letters, st.booleans(), *containers, *none)
    if kind == "str":
        return st.one_of(st.integers(), fractional, st.booleans(), *containers, *none)
    if kind == "bool":
        return st.one_of(letters, st.integers(min_value=2, max_value=10**6), fractional, *containers, *none)
    if kind == "intlist":
        return st.one_of(st.integers(), letters, st.dictionaries(letters, st.integers(), min_size=1, max_size=2),
                         st.lists(letters, min_size=1, max_size=2), *none)
    if kind == "text":
        return st.one_of(st.integers(), st.booleans(), st.dictionaries(letters, letters, min_size=1, max_size=2),
                         st.lists(st.integers(), min_size=1, max_size=2), st.just([]),
                         st.lists(letters, min_size=3, max_size=4))
    if kind == "dict":
        return st.one_of(st.integers(), letters, st.lists(st.integers(), min_size=1, max_size=2))
    if kind == "layer_map":
        pair_wrong = st.lists(st.integers(0, 3), min_size=3, max_size=4) | st.lists(st.integers(0, 3), max_size=1)
        return st.one_of(st.integers(), letters, st.just([]), st.lists(pair_wrong, min_size=1, max_size=2),
                         st.just([[-1, 2]]), st.just([["a", "b"]]), st.dictionaries(letters, st.integers(), min_size=1))
    if kind == "choice":
        bad = [letters.filter(lambda s: s not in spec["values"]), st.lists(letters, min_size=1, max_size=2)]
        if not spec["accepts_bool"]:
            bad.append(st.booleans())
        return st.one_of(*bad, st.integers(min_value=2, max_value=100), *none)
    raise AssertionError(kind)


# ---- mutations: each returns (description, expected key paths, mutate(config)) ---------------------
@st.composite
def mutations(draw):
    recipe = draw(st.sampled_from(sorted(RECIPES)))
    student = draw(st.integers(0, len(STUDENTS) - 1))
    config = base_config(recipe, student, "OUTPUT")
    paths = leaves(config)
    kind = draw(st.sampled_from(["wrong_type", "out_of_range", "bad_choice", "unknown_key", "missing",
                                 "wrong_nesting", "cross_field"]))
    if kind == "wrong_type":
        path = draw(st.sampled_from([p for p in paths if p in SPEC]))
        value = draw(wrong_type(SPEC[path]))
        return _set(config, path, value, kind, (path,))
    if kind == "out_of_range":
        path = draw(st.sampled_from([p for p in paths if SPEC.get(p, {}).get("kind") in
                                     ("int", "float", "max_steps", "intlist")]))
        return _set(config, path, draw(out_of_range(SPEC[path])), kind, (path,))
    if kind == "bad_choice":
        path = draw(st.sampled_from([p for p in paths if SPEC.get(p, {}).get("kind") == "choice"]))
        spec = SPEC[path]
        value = draw(letters.filter(lambda s: s not in spec["values"]))
        return _set(config, path, value, kind, (path,))
    if kind == "unknown_key":
        section = draw(st.sampled_from([None, *SECTIONS]))
        known = set(config) if section is None else set(config[section]) | {k.split(".", 1)[1] for k in SPEC
                                                                            if k.startswith(section + ".")}
        key = draw(st.from_regex(r"[a-z][a-z0-9_]{0,14}", fullmatch=True).filter(lambda k: k not in known))
        value = draw(st.one_of(st.integers(), letters, st.booleans(), st.lists(st.integers(), max_size=2)))
        target = config if section is None else config[section]
        target[key] = value
        return kind, (key if section is None else f"{section}.{key}",), config
    if kind == "missing":
        path = draw(st.sampled_from(["student", "task", "recipe", "output", "task.kind", "task.train", "task.eval",
                                     "recipe.name"]))
        parent, key = get_parent(config, path)
        del parent[key]
        return kind, (path,), config
    if kind == "wrong_nesting":
        how = draw(st.sampled_from(["move_to_top", "move_to_section", "wrap", "as_list", "as_scalar"]))
        if how in ("wrap", "as_list", "as_scalar"):
            section = draw(st.sampled_from(SECTIONS))
            inner = config[section]
            if how == "wrap":
                config[section] = {section: inner}
                # A wrapped recipe has no name at its top: that is the key reported.
                return f"{kind}/{how}", (f"{section}.{section}", "recipe.name"), config
            config[section] = [inner] if how == "as_list" else draw(st.integers() | fractional)
            return f"{kind}/{how}", (section,), config
        path = draw(st.sampled_from([p for p in paths if "." in p]))
        parent, key = get_parent(config, path)
        value = parent.pop(key)
        if how == "move_to_top":
            if key in config:
                config[key + "_x"] = value
                key += "_x"
            else:
                config[key] = value
            return f"{kind}/{how}", (key, path), config
        sections = [s for s in SECTIONS if s != path.split(".")[0] and key not in config[s]
                    and f"{s}.{key}" not in SPEC]
        section = draw(st.sampled_from(sections))
        config[section][key] = value
        return f"{kind}/{how}", (f"{section}.{key}", path), config
    # cross_field: two student sources, or a global batch that does not split into accumulation steps
    which = draw(st.sampled_from(["two_students", "accumulation", "teacher_batch"]))
    if which == "two_students":
        extra = draw(st.sampled_from([s for i, s in enumerate(STUDENTS) if i != student]))
        source = next(k for k in extra if k != "init_from")
        config["student"][source] = copy.deepcopy(extra[source])
        return f"{kind}/{which}", ("student",), config
    steps = draw(st.integers(3, 7).filter(lambda n: 16 % n))
    config["training"]["gradient_accumulation_steps"] = steps
    if which == "teacher_batch":
        config["training"]["gradient_accumulation_steps"] = 2
        config["teacher"]["batch_size"] = draw(st.integers(1, 99).filter(lambda n: n % 2))
        return f"{kind}/{which}", ("teacher.batch_size",), config
    return f"{kind}/{which}", ("training.gradient_accumulation_steps",), config


def _set(config, path, value, kind, expected):
    parent, key = get_parent(config, path)
    parent[key] = value
    return kind, expected, config


def names_a_key(line: str, keys) -> bool:
    """The line names one of `keys` as a whole dotted path (a list index after it is fine)."""
    return any(re.search(r"(?<![\w.])" + re.escape(key) + r"(\.\d+)*(?![\w.])", line) for key in keys)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("lmdistill: error:")]


class ReachedDataLoading(Exception):
    """Config validation let the config through; the test stops it before any data or model loads."""


@pytest.fixture()
def tripwire(monkeypatch):
    import lmdistill.api

    def stop(*args, **kwargs):
        raise ReachedDataLoading()

    monkeypatch.setattr(lmdistill.api, "build_task", stop)
    monkeypatch.setattr(lmdistill.api, "load_teacher", stop)


def run_in_process(config: dict, folder: Path) -> tuple[int | None, str]:
    path = folder / "exp.yaml"
    path.write_text(yaml.dump(config, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)))
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            code = main(["run", str(path)])
        except ReachedDataLoading:
            return None, stderr.getvalue()
        except BaseException as err:  # noqa: BLE001 - a traceback is what the test counts
            import traceback

            return -1, stderr.getvalue() + "Traceback (escaped main):\n" + traceback.format_exc() + repr(err)
    return code, stderr.getvalue()


def test_the_valid_bases_get_past_validation(tmp_path, tripwire):
    """Without this, every mutation would fail for a reason of the base's own."""
    for recipe in RECIPES:
        for student in range(len(STUDENTS)):
            config = base_config(recipe, student, str(tmp_path / "out"))
            code, err = run_in_process(config, tmp_path)
            assert code is None, (recipe, student, err)
            assert set(leaves(config)) <= set(SPEC) | {"student.config"}, set(leaves(config)) - set(SPEC)


def test_fuzzed_configs_fail_with_one_line_naming_the_key(tmp_path, tripwire):
    stats, failures = Counter(), []
    case_dir = tmp_path / "cases"
    case_dir.mkdir()

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(mutations())
    def check(case):
        kind, expected, config = case
        stats["cases"] += 1
        stats[kind.split("/")[0]] += 1
        output = case_dir / f"out-{stats['cases']}"
        config = copy.deepcopy(config)
        if isinstance(config.get("output"), str):
            config["output"] = str(output)
        code, err = run_in_process(config, case_dir)
        lines = error_lines(err)
        problems = []
        if code is None:
            problems.append("got past config validation")
        elif code != 2:
            problems.append(f"exit status {code}")
        if "Traceback" in err:
            stats["traceback"] += 1
            problems.append("traceback")
        if len(lines) != 1:
            problems.append(f"{len(lines)} error lines")
        elif not names_a_key(lines[0], expected):
            problems.append(f"does not name {' or '.join(expected)}")
        if output.exists():
            problems.append("output folder written")
        if problems:
            failures.append((kind, expected, problems, err.strip()[-400:], config))

    check()
    print(f"\nfuzzed configs: {stats['cases']} cases, {stats['traceback']} tracebacks, {len(failures)} failures; "
          f"by mutation: {dict((k, v) for k, v in stats.items() if k not in ('cases', 'traceback'))}")
    assert stats["cases"] >= min(EXAMPLES, 300)
    assert not failures, "\n\n".join(f"{k} {e}: {p}\n{err}\n{c}" for k, e, p, err, c in failures[:5])


# ---- a handful through the real command line -------------------------------------------------------
CLI_CASES = [  # (section, key, value, the key the error must name); the first goes through --set
    ("training", "gradient_accumulation_steps", 0, "training.gradient_accumulation_steps"),
    ("training", "lr_scheduler", "cosinee", "training.lr_scheduler"),
    ("bench", "batch_sizes", [], "bench.batch_sizes"),
    ("training", "epochs", -2, "training.epochs"),
]


def test_real_command_line(tmp_path):
    """`python -m lmdistill.cli run` in a subprocess: the issue's examples (started together: each
    spends its time importing torch)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    started = []
    for index, (section, key, value, expected) in enumerate(CLI_CASES):
        output = tmp_path / f"out-{index}"
        config = base_config("kd", 0, str(output))
        extra = []
        if index == 0:
            extra = ["--set", f"{section}.{key}={value}"]
        else:
            config[section][key] = value
        path = tmp_path / f"exp-{index}.yaml"
        path.write_text(yaml.safe_dump(config))
        process = subprocess.Popen([sys.executable, "-m", "lmdistill.cli", "run", str(path), *extra],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        started.append((process, output, expected))
    for process, output, expected in started:
        _, stderr = process.communicate(timeout=600)
        lines = error_lines(stderr)
        assert process.returncode == 2, stderr
        assert "Traceback" not in stderr
        assert len(lines) == 1 and names_a_key(lines[0], [expected]), stderr
        assert not output.exists()
