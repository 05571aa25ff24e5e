#!/usr/bin/env bash
# Every check that needs a GPU, in one bounded run (under 10 minutes on one H100/H200):
#   env → CLI smoke (finetune on cuda, predict, evaluate) → CPU/GPU feature parity → heads trained on the GPU,
#   batched and one at a time → normalize="cv"'s check on the GPU against scikit-learn → extraction speed (all
#   of TREC-6 + BBC News, then the bench's default corpus, then where a cold `extract` spends its time)
#   → fine-tuning and multi-task benchmark → the test suite with a GPU visible (its GPU tests run).
# Needs finetext's dependencies with the demo extra importable and ../shared/data beside the checkout: on a lent
# machine, which has torch and transformers but not the demo packages, bench/gpu_carry.sh brings them.
# The full log is gpu-check.log in $OUT (the device tool's folder) or runs/gpu-check/.
#     bash bench/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
LOG=${OUT:-runs/gpu-check}
mkdir -p "$LOG"
PY=${PYTHON:-python3}
DEV=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run one check under a time limit, log it, never stop the others
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    [[ -n ${ONLY:-} && ,$ONLY, != *,$name,* ]] && return  # ONLY=parity,tests runs just those
    echo "=== $name"
    timeout "$limit" "$@" >"$LOG/step.log" 2>&1
    local rc=$?
    { echo "=== $name"; cat "$LOG/step.log"; echo "=== $name: exit $rc"; } >>"$LOG/gpu-check.log"
    grep -v "it/s\]\|s/it\]\|docs/s\]" "$LOG/step.log" | tail -n 25
    rm "$LOG/step.log"
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
}

step env 60 $PY -c "import torch, transformers; print('torch', torch.__version__, '| transformers', \
transformers.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
FT=$(mktemp -d)/ft
step cli-smoke 90 bash -c "$PY -m finetext finetune trec --budget 16 --epochs 1 --min-steps 20 --device $DEV \
  --quiet -o $FT && $PY -m finetext predict --head $FT --device $DEV --text 'Who wrote Hamlet?' \
  --text 'How far is the Moon?' && $PY -m finetext evaluate --head $FT --input trec --split test --device $DEV"
step parity 60 $PY bench/device_parity.py --device $DEV
step heads-speed 180 $PY bench/heads_speed.py --device $DEV
step cv-check 120 $PY bench/cv_check.py trec bbc --device $DEV
step heads-precision 120 $PY bench/heads_precision.py --device $DEV --seeds-all 2
step extract-speed-all 150 $PY bench/extract_speed.py --device $DEV --trec 5452 --bbc 2225
step extract-speed-all-bf16 150 $PY bench/extract_speed.py --device $DEV --trec 5452 --bbc 2225 --dtype bf16
step extract-speed 120 $PY bench/extract_speed.py --device $DEV
step extract-phases 60 bash -c "cd bench && $PY extract_phases.py --device $DEV"
step finetune-bench 300 bash -c "$PY bench/finetune_trec.py && cp runs/bench/finetune/report/summary.md $LOG/"
step tests 150 $PY -m pytest -q -p no:cacheprovider
