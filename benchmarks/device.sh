#!/usr/bin/env bash
# The project's benchmarks on an accelerator, in one short script (a GPU session runs it once).
#
#   bash benchmarks/device.sh                    # CUDA, full settings sized for < 8 minutes on one GPU
#   QUICK=1 DEVICE=cpu bash benchmarks/device.sh # smoke run here on the CPU (a few minutes)
#   BUDGET=420 bash benchmarks/device.sh         # every step ends within 420 s of the start
#   STEPS="rectify learned" bash benchmarks/device.sh  # only these steps (rectify rectify_population learned)
#   POPULATION_ARGS="--seeds 3 --workers 8" bash benchmarks/device.sh  # a step's own arguments (RECTIFY_ARGS, LEARNED_ARGS too)
#
# Runs, each with --device $DEVICE: benchmarks/rectify.py (rank-one vs fine-tuning on the sample
# Trojan and cue models), benchmarks/rectify_population.py (the held-out Trojan / cue population,
# built first with the machine's cores), benchmarks/learned.py (learned editors vs baselines).
# Results go to $OUT when it is set (the device machine's return folder: flat, at most 8 files),
# else to benchmarks/results/$DEVICE/ beside the CPU results. A step that fails or runs past its
# time limit is logged in device.log and the next one still runs; the exit status counts failures.
set -uo pipefail

cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-0}"
DEST="${OUT:-benchmarks/results/$DEVICE}"
mkdir -p "$DEST"
LOG="$DEST/device.log"
CORES="$(nproc 2>/dev/null || echo 2)"
WORKERS=$(( CORES > 2 ? CORES / 2 : 1 ))
# a fresh population cache on a bare machine; the CPU one is reused here
export AUDITOR_ZOO_DIR="${AUDITOR_ZOO_DIR:-${HOME}/.cache/auditor/zoo}"
export OMP_NUM_THREADS=1

if [ "$QUICK" = 1 ]; then
    RECTIFY=(--seeds 1 --samples 1,5)
    POPULATION=(--quick --build-workers "$WORKERS")
    LEARNED=(--population 1 --no-sample)
    LIMITS=(600 600 600)
else
    RECTIFY=(--seeds 2)  # one seed: 24 s on an H100 (2026-11-28); five ran past 85 s
    POPULATION=(--seeds 1 --no-scaling --workers "$WORKERS" --build-workers "$WORKERS")  # 118 s on an H100
    # the fine-tuning sweep (~200 s on 8 workers) is the CPU run's: settings, not timings, come from it
    CPU_RUN=benchmarks/results/rectify_population.json
    [ -f "$CPU_RUN" ] && POPULATION+=(--sweep-from "$CPU_RUN")
    LEARNED=(--population 2 --wide 3)  # ~30 s a model on an H100 (fairlearn's baselines run on the CPU)
    LIMITS=(80 180 200)  # 8 minutes at most in all; on an H100 (2026-11-28): learned 125 s
fi
[ -n "${LIMITS_S:-}" ] && read -r -a LIMITS <<<"$LIMITS_S"  # e.g. LIMITS_S="40 60 100"
# a step's own arguments instead of the above, e.g. POPULATION_ARGS="--seeds 1 --no-scaling --workers 8"
[ -n "${RECTIFY_ARGS:-}" ] && read -r -a RECTIFY <<<"$RECTIFY_ARGS"
[ -n "${POPULATION_ARGS:-}" ] && read -r -a POPULATION <<<"$POPULATION_ARGS"
[ -n "${LEARNED_ARGS:-}" ] && read -r -a LEARNED <<<"$LEARNED_ARGS"
BUDGET="${BUDGET:-0}"  # 0: the limits above; else a step gets at most what is left of BUDGET s after
                       # keeping a fifth of each later step's limit for it

{
    echo "device.sh on $(hostname) at $(date -u '+%Y-%m-%d %H:%M:%S UTC'), DEVICE=$DEVICE QUICK=$QUICK, $CORES cores"
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} >"$LOG" 2>&1

STEPS="${STEPS:-rectify rectify_population learned}"
failures=0
step() {  # step NAME LIMIT_S RESERVE_S COMMAND...
    local name="$1" limit="$2" reserve="${3:-0}"
    shift 3
    case " $STEPS " in *" $name "*) ;; *) echo "== $name: skipped (STEPS=$STEPS)" >>"$LOG"; return 0 ;; esac
    if [ "$BUDGET" -gt 0 ]; then
        local left=$((BUDGET - SECONDS - reserve))
        [ "$left" -lt "$limit" ] && limit=$left
        [ "$limit" -lt 10 ] && limit=10
    fi
    local start=$SECONDS
    echo "== $name: $*" >>"$LOG"
    timeout "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s" >>"$LOG"
    [ "$rc" = 0 ] || failures=$((failures + 1))
}

step rectify "${LIMITS[0]}" $(((LIMITS[1] + LIMITS[2]) / 5)) python benchmarks/rectify.py --device "$DEVICE" "${RECTIFY[@]}" --out "$DEST"
step rectify_population "${LIMITS[1]}" $((LIMITS[2] / 5)) python benchmarks/rectify_population.py --device "$DEVICE" "${POPULATION[@]}" \
    --out "$DEST"
step learned "${LIMITS[2]}" 0 python benchmarks/learned.py --device "$DEVICE" "${LEARNED[@]}" --out "$DEST"

echo "device.sh: $failures step(s) failed; results in $DEST" | tee -a "$LOG"
ls -l "$DEST" >>"$LOG"
exit "$failures"
