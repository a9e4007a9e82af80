#!/usr/bin/env bash
# GPU smoke test: from a fresh clone on a CUDA machine, in one command,
#
#     bash benchmarks/gpu_smoke.sh            # makes .venv-gpu, installs, runs everything
#     bash benchmarks/gpu_smoke.sh --no-install --python python3   # an environment that has CUDA torch already
#     options: --venv DIR (.venv-gpu), --steps N (50), --set KEY=VALUE (demo and evals), --no-tests
#
# 1. installs torch from the default index (a CUDA build on Linux x86_64; NOT constraints.txt,
#    which pins the CPU build) and then lmdistill with its demo, test and export extras;
# 2. checks that torch sees a GPU (else it stops: a CPU run proves nothing here);
# 3. runs the demo config on CUDA (MiniLM-L6 teacher fine-tuned on SST-2 with a fresh cache, so the
#    teacher's fine-tuning runs on the GPU too; a 3-layer student, kd, --steps steps), and checks
#    that the report measured teacher and student on CUDA with a peak-memory figure for each;
# 4. runs `lmdistill eval` on the student (CUDA), exports it to ONNX and runs
#    `lmdistill eval --compare-onnx` (PyTorch on CUDA beside onnxruntime on the CPU);
# 5. runs the test suite with the GPU visible;
# and prints a summary. Any failing step stops the script with its name and a non-zero status.
# Everything it writes is under runs/gpu-smoke/ (and the virtualenv).
set -Eeuo pipefail

VENV=.venv-gpu
PYTHON=""
INSTALL=1
STEPS=50
TESTS=1
declare -a SETS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) VENV="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --steps) STEPS="$2"; shift 2 ;;
    --no-tests) TESTS=0; shift ;;
    --set) SETS+=(--set "$2"); shift 2 ;;   # passed to the demo and both evals, e.g. --set training.bf16=true
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_smoke: unknown argument $1" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/runs/gpu-smoke"
STEP="start"
declare -a SUMMARY=()
trap 'status=$?; echo; echo "gpu_smoke: FAILED at step: $STEP (exit $status)" >&2; exit $status' ERR

step() { STEP="$1"; echo; echo "==== gpu_smoke: $1"; STEP_START=$(date +%s); }
done_step() { SUMMARY+=("$(printf '%-38s ok  %5ss  %s' "$STEP" $(( $(date +%s) - STEP_START )) "${1:-}")"); }

step "install"
if [[ $INSTALL == 1 ]]; then
  python3 -m venv "$VENV"
  PYTHON="$VENV/bin/python"
  "$PYTHON" -m pip install -q --upgrade pip
  "$PYTHON" -m pip install -q torch            # the default index: a CUDA build
  "$PYTHON" -m pip install -q -e ".[demo,test,export]"
else
  PYTHON="${PYTHON:-python3}"
  export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
fi
done_step "$("$PYTHON" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"

step "cuda available"
"$PYTHON" - <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_smoke: torch {torch.__version__} sees no CUDA GPU (torch.version.cuda={torch.version.cuda}); "
             "this script checks the GPU path and needs one")
print("device:", torch.cuda.get_device_name(0), "| CUDA", torch.version.cuda, "| bf16:", torch.cuda.is_bf16_supported())
EOF
done_step "$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))')"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export LMDISTILL_CACHE="$OUT/cache"   # fresh: the teacher is fine-tuned on the GPU, not taken from a CPU run
rm -rf "$OUT"
mkdir -p "$OUT"
LMDISTILL=("$PYTHON" -m lmdistill.cli)

step "demo on CUDA ($STEPS steps)"
"${LMDISTILL[@]}" demo --output "$OUT/demo" --set "training.max_steps=$STEPS" ${SETS[@]+"${SETS[@]}"} | tee "$OUT/demo.txt"
"$PYTHON" - "$OUT/demo/report.json" <<'EOF' | tee "$OUT/check.txt"
import json, math, sys
report = json.load(open(sys.argv[1]))
problems = []
for role in ("teacher", "student"):
    entry = report[role]
    if not str(entry.get("device", "")).startswith("cuda"):
        problems.append(f"{role} was measured on {entry.get('device')!r}, not CUDA")
    if entry.get("peak_mem_mb") is None:
        problems.append(f"{role} has no peak-memory figure")
    if not entry.get("latency_ms"):
        problems.append(f"{role} has no latency figures")
for stage in report["stages"]:
    if not all(math.isfinite(loss) for _, loss in stage["loss_curve"]):
        problems.append(f"stage {stage['stage']} has a non-finite loss")
if problems:
    sys.exit("gpu_smoke: the demo report is wrong: " + "; ".join(problems))
print(f"teacher {report['teacher']['score']:.4f} / student {report['student']['score']:.4f} "
      f"{report['teacher']['metric']}, peak memory {report['teacher']['peak_mem_mb']} / "
      f"{report['student']['peak_mem_mb']} MiB, speed-up {report['speedup']}")
EOF
done_step "$(cat "$OUT/check.txt")"

step "eval the student on CUDA"
"${LMDISTILL[@]}" eval "$OUT/demo/student" --config configs/demo.yaml ${SETS[@]+"${SETS[@]}"} > "$OUT/eval.json"
"$PYTHON" - "$OUT/eval.json" "$OUT/demo/report.json" <<'EOF' | tee "$OUT/check.txt"
import json, sys
entry, report = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
if not entry["device"].startswith("cuda"):
    sys.exit(f"gpu_smoke: eval measured on {entry['device']!r}, not CUDA")
if abs(entry["score"] - report["student"]["score"]) > 1e-6:
    sys.exit(f"gpu_smoke: eval scored {entry['score']}, the run's report {report['student']['score']}")
print(f"{entry['metric']} {entry['score']:.4f} on {entry['device']}, latency {entry['latency_ms']} ms")
EOF
done_step "$(cat "$OUT/check.txt")"

step "export to ONNX + eval --compare-onnx"
"${LMDISTILL[@]}" export "$OUT/demo/student" --out "$OUT/onnx"
"${LMDISTILL[@]}" eval "$OUT/demo/student" --config configs/demo.yaml ${SETS[@]+"${SETS[@]}"} \
  --compare-onnx "$OUT/onnx" > "$OUT/compare.json"
"$PYTHON" - "$OUT/compare.json" <<'EOF' | tee "$OUT/check.txt"
import json, sys
both = json.load(open(sys.argv[1]))
pytorch, onnx = both["pytorch"], both["onnx"]
if abs(pytorch["score"] - onnx["score"]) > 0.005:
    sys.exit(f"gpu_smoke: ONNX scores {onnx['score']} but PyTorch {pytorch['score']}")
print(f"pytorch ({pytorch['device']}) {pytorch['latency_ms']} ms | onnx ({onnx['device']}) {onnx['latency_ms']} ms")
EOF
done_step "$(cat "$OUT/check.txt")"

if [[ $TESTS == 1 ]]; then
  step "test suite with the GPU visible"
  "$PYTHON" -m pytest -q tests -x 2>&1 | tee "$OUT/pytest.txt"
  done_step "$(tail -n 1 "$OUT/pytest.txt")"
fi

trap - ERR
echo
echo "==== gpu_smoke: summary ($("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))'))"
printf '%s\n' "${SUMMARY[@]}"
echo "outputs: $OUT (demo/report.md, eval.json, compare.json, pytest.txt)"
echo "gpu_smoke: PASSED"
