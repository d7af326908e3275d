#!/usr/bin/env bash
# One prepared run of the CUDA path on a GPU machine: set up, agreement tests, benchmark.
#
#   bash benchmarks/gpu_check.sh [OUTPUT_DIR]      (default: $OUT if set, else gpu-check-output/)
#
# Writes into OUTPUT_DIR: gpu_check.log (environment, tables, test output, whole-process timings),
# precision.json (each CUDA precision against the CPU path), junit.xml (the CUDA agreement tests
# but torch.compile's, whose output is in the log) and speed-{default,float16,channels-last,compile}.json
# (the benchmark runs; their markdown tables are in the log). On a machine without CUDA every CUDA part is skipped with a
# message and the script still ends 0, so it can be checked end to end on a CPU.
#
# Environment (all optional):
#   PYTHON                 the interpreter to use (default: python3 where it has a CUDA torch,
#                          else the README's set-up, `make setup`, and .venv/bin/python: on a
#                          GPU machine with network PyPI's torch wheel is the CUDA build)
#   POCKETSEG_WHEELS       a folder of wheels for what that interpreter lacks (SimpleITK, monai),
#                          for machines without network
#   POCKETSEG_SHARED_DATA  real sample images (brain/, liver/) for the real-image agreement tests
#   GPU_CHECK_QUICK=1      small benchmark inputs and one run (a smoke test, not numbers to report)
#   GPU_CHECK_STEP_SECONDS time limit of each step (default 400; the default benchmark with
#                          the MONAI peers took over 150 s on an H200)
set -uo pipefail
cd "$(dirname "$0")/.."

OUTPUT=$(realpath -m "${1:-${OUT:-gpu-check-output}}")
mkdir -p "$OUTPUT"
LOG="$OUTPUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
STEP_SECONDS=${GPU_CHECK_STEP_SECONDS:-400}
export PYTHONUNBUFFERED=1
STATUS=0

step() {  # step NAME COMMAND...: run with a time limit, log its time and exit status, go on
    local name=$1
    shift
    echo
    echo "=== $name ($(date -u +%H:%M:%S))"
    local started=$SECONDS
    timeout --kill-after=10 "$STEP_SECONDS" "$@"
    local code=$?
    echo "=== $name: exit $code after $((SECONDS - started)) s"
    [ "$code" -eq 0 ] || STATUS=1
    return 0
}

# --- the interpreter and what it lacks --------------------------------------------------------
if [ -z "${PYTHON:-}" ]; then
    if python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        PYTHON=python3  # a machine image that ships a CUDA torch: use it as it is
    else
        make setup || { echo "set-up failed"; exit 1; }
        PYTHON=.venv/bin/python
    fi
fi
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
SITE="$SCRATCH/site"
if [ -n "${POCKETSEG_WHEELS:-}" ] && ls "$POCKETSEG_WHEELS"/*.whl >/dev/null 2>&1; then
    # only what the interpreter lacks, so its own numpy/torch are never replaced
    wanted=""
    for wheel in "$POCKETSEG_WHEELS"/*.whl; do
        module=$(basename "$wheel" | cut -d- -f1 | tr '[:upper:]' '[:lower:]')
        [ "$module" = simpleitk ] && module=SimpleITK
        "$PYTHON" -c "import $module" 2>/dev/null || wanted="$wanted $wheel"
    done
    if [ -n "$wanted" ]; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" $wanted ||
            { echo "could not install$wanted"; exit 1; }
    fi
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import SimpleITK, numpy, torch, pytest" ||
    { echo "the interpreter $PYTHON lacks SimpleITK, numpy, torch or pytest (set POCKETSEG_WHEELS)"; exit 1; }

echo "=== environment"
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: none"
"$PYTHON" - <<'EOF'
import os, platform, torch, SimpleITK, numpy
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"numpy {numpy.__version__}, SimpleITK {SimpleITK.Version_VersionString()}, {os.cpu_count()} CPUs")
print("CUDA device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF
CUDA=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")
[ "$CUDA" = 1 ] || echo "no CUDA device: the agreement tests skip and the benchmark runs on the CPU"
DEVICE=$([ "$CUDA" = 1 ] && echo cuda || echo cpu)
DATA=${POCKETSEG_SHARED_DATA:-../shared/data}

# --- 0. each CUDA precision against the CPU path, and its speed (the default's evidence) ------
step "CUDA precisions against the CPU" "$PYTHON" -m benchmarks.precision --data "$DATA" \
    --output "$OUTPUT/precision.json"

# --- 1. agreement: the CUDA path against the CPU reference (Dice >= 0.999) ---------------------
# torch.compile's cases last (a minute of compiling each): what matters most comes back first
step "CUDA agreement tests" "$PYTHON" -m pytest -q -s -p no:cacheprovider Testing/Python/test_cuda.py \
    -k "not compile" --junitxml="$OUTPUT/junit.xml"

# --- 2. the benchmark: whole job and network alone, GPU memory ----------------------------------
QUICK=()
[ "${GPU_CHECK_QUICK:-0}" = 1 ] && QUICK=(--quick)
PEERS=()
"$PYTHON" -c "import monai" 2>/dev/null || PEERS=(--no-peers)
[ ${#PEERS[@]} -eq 0 ] || echo "MONAI not installed: the peer networks are skipped"
bench() {  # bench NAME ARGS...: one benchmark run; its JSON comes back as speed-NAME.json
    local name=$1
    shift
    step "benchmark $name" "$PYTHON" -m benchmarks speed --device "$DEVICE" --threads 4 "${QUICK[@]}" \
        --output "$SCRATCH/speed-$name" "$@"
    cp "$SCRATCH/speed-$name"/*.json "$OUTPUT/speed-$name.json" 2>/dev/null
}
bench default "${PEERS[@]}"
bench float16 --networks pocket --precision float16
# --- 3. whole process, as a user runs it ---------------------------------------------------------
for pair in "skullstrip brain/swiss_atlas_t1.mha" "liver liver/ts_abdomen_ct_unlabeled.nii.gz"; do
    set -- $pair
    if [ -f "$DATA/$2" ]; then
        for run in 1 2; do
            step "pocketseg predict --task $1 --device $DEVICE, $2, run $run" bash -c \
                "time '$PYTHON' -m pocketseg_core predict --task $1 --device $DEVICE --input '$DATA/$2' --output '$SCRATCH/mask.nii.gz'"
        done
    else
        echo "no $DATA/$2: whole-process timing of $1 skipped"
    fi
done

bench channels-last --networks pocket --channels-last --batch-size 16
step "CUDA agreement tests, torch.compile" "$PYTHON" -m pytest -q -s -p no:cacheprovider \
    Testing/Python/test_cuda.py -k compile
bench compile --networks pocket --compile --repeats 2

echo
echo "=== done $(date -u +%H:%M:%S); every step passed: $([ $STATUS = 0 ] && echo yes || echo no)"
exit $STATUS
