#!/usr/bin/env bash
# The GPU measurements of issue #15 in ONE call of a GPU machine with no network, sized for
# this workplace's device budget (15 minutes of one GPU for a whole task, machine starts
# included; at most 10 minutes a call), from the repository root there, with the wheels of
# scripts/gpu_wheels.sh carried in .whl/ (docs/development.md, "On a GPU machine"):
#
#   scripts/gpu_session.sh [STAGE ...]          default: every stage below, in this order
#
# Stages run in priority order, each under its own cap and all within DEADLINE seconds of
# the call's start (default 540: give the call timeout_s 600). A stage that no longer gets
# its minimum is skipped, and said so. Every stage writes what it measured to $OUT as soon
# as it ends, so a call cut short still returns everything it finished; $OUT/session.txt
# has a line per stage (exit code, seconds, or why it was skipped).
#
#   stage        cap  min  what
#   check        180   60  the CUDA tests: GPU against CPU step by step, CUDA graphs, host reads,
#                          the 5·10⁶-neuron step, the fused kernels compiled for real (test_fused)
#   bench        150   60  bench_step at widths 5,000 and 10⁶ (whole runs with the graph on and off)
#   vgg-parts     90   45  alignment on VGG16 / synthetic CIFAR-10 (50,000 images): a short run at the
#                          sized Figure 3(b) settings, timed part by part (summary "parts"), and the
#                          sized run's time projected from those parts
#   sme          240  150  the sme-order-gpu recipe (100,000 replicas): figure, results entry
#   width        120   60  bench_width 10⁴…10⁸: time per step, peak memory, neuron-samples per second
#   convergence   90   40  the convergence-II-gpu recipe, then convergence II with --backend fused
#   tiles         90   40  bench_tiles at width 10⁶
#   vgg           -   120  the whole sized Figure 3(b) run, with what time is left (stopped at the
#                          deadline, and said so)
#
# $OUT defaults to /tmp/gpu-out. DEVICE=cpu rehearses the plumbing on a CPU machine (the
# stages then measure nothing of interest, and most stop at their caps); so do a smaller
# data set and network: CIFAR_PER_BATCH=100 VGG_SIZED="--pairs 0.05:0.5 --samples 3 --batch 20
# --noise-steps 0 --vgg-width 0.03 --eigenvectors 2 --direction-samples 4" (VGG_EPOCHS, VGG_EVERY
# size the whole run).
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p "${OUT:-/tmp/gpu-out}" || exit 1
OUT=$(cd "${OUT:-/tmp/gpu-out}" && pwd)
DEADLINE=${DEADLINE:-540}
DEVICE=${DEVICE:-cuda}
export OUT DEVICE PYTHONUNBUFFERED=1
T0=$(date +%s)
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(check bench vgg-parts sme width convergence tiles vgg)
# the Figure 3(b) run sized by a FLOP count (docs/alignment.md), and its short run: the same
# settings for 1 epoch (α at epochs 0 and 1)
export VGG_EPOCHS=${VGG_EPOCHS:-20} VGG_EVERY=${VGG_EVERY:-5} CIFAR_PER_BATCH=${CIFAR_PER_BATCH:-10000}
export VGG_SIZED=${VGG_SIZED:-"--pairs 0.05:0.5 --samples 20 --batch 500 --noise-steps 0"}

log() { echo "$*" | tee -a "$OUT/session.txt"; }
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }

if [ "${INSTALL:-1}" = 1 ]; then  # INSTALL=0: dropdyn is installed already (the script's test)
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
  fi
  python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null || exit 1
fi
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')" | tee "$OUT/versions.txt"
log "setup: $(( $(date +%s) - T0 )) s"

vgg_run() {  # vgg_run FOLDER EPOCHS EVERY: the alignment run at the sized settings, its bar in FOLDER.log
  local data=/tmp/cifar-$CIFAR_PER_BATCH
  [ -d "$data/cifar-10-batches-py" ] || python3 scripts/synthetic_cifar.py "$data" --per-batch "$CIFAR_PER_BATCH" >/dev/null
  # shellcheck disable=SC2086
  dropdyn run alignment --model vgg16 --dataset cifar10 --data-dir "$data" --device "$DEVICE" --progress \
    --epochs "$2" --every "$3" $VGG_SIZED --force --out "$1" 2> >(tr '\r' '\n' > "$1.log")
}

vgg_projection() {  # the sized run's time from the short run's parts (alignment.projected_seconds)
  python3 - "$1" "$VGG_EPOCHS" "$VGG_EVERY" <<'EOF'
import json, sys
from dropdyn.experiments.alignment import projected_seconds
summary, epochs, every = json.load(open(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3])
for name, seconds in projected_seconds(summary["parts"], epochs, every).items():
    print(f"| {name} | {seconds:.1f} s |")
print(f"(projected for {epochs} epochs, α every {every}, from a run of {summary['seconds']:.1f} s, set-up included)")
EOF
}

stage() {  # stage NAME CAP MIN: the work of NAME, under min(CAP, time left)
  local name=$1 cap=$2 min=$3 t rc budget
  budget=$(left)
  [ "$cap" = - ] || [ "$budget" -le "$cap" ] || budget=$cap
  if [ "$budget" -lt "$min" ]; then
    log "$name: skipped ($(left) s left before the deadline, needs $min)"
    return
  fi
  t=$(date +%s)
  timeout -k 10 "$budget" bash -c "$(declare -f work_"${name//-/_}" vgg_run vgg_projection); work_${name//-/_}" \
    > "$OUT/$name.log" 2>&1
  rc=$?
  if [ $rc = 124 ] || [ $rc = 137 ]; then
    log "$name: stopped at its limit of $budget s (what it finished is in $name.log)"
  else
    log "$name: exit $rc, $(( $(date +%s) - t )) s"
  fi
}

work_check() {
  # (pyproject's addopts has -q: -vv gives a line per test, so a stopped run shows how far it got)
  python3 -m pytest -vv -rs -p no:cacheprovider --durations=10 tests/test_engine.py tests/test_divergence.py \
    tests/test_host_reads.py tests/test_graph.py tests/test_sme.py tests/test_benchmarks.py \
    "tests/test_experiments_small.py::test_alignment_runs_on_cuda" tests/test_fused.py
}
work_bench() {
  python3 benchmarks/bench_step.py --device "$DEVICE"
  python3 benchmarks/bench_step.py --device "$DEVICE" --width 1000000 --repeats 10 --run-steps 30
}
work_vgg_parts() {
  vgg_run /tmp/vgg-parts 1 1 && cp /tmp/vgg-parts/summary.json "$OUT/vgg_parts_summary.json" \
    && vgg_projection /tmp/vgg-parts/summary.json
}
work_sme() {
  python3 scripts/figures.py --only sme-order-gpu && cp docs/results.json docs/results.md docs/sme_order_gpu.png "$OUT/"
}
work_width() {
  python3 benchmarks/bench_width.py --device "$DEVICE" --backends torch,fused --steps 30 --repeats 2 --timeout 40
}
work_convergence() {
  python3 scripts/figures.py --only convergence-II-gpu && cp docs/results.json docs/results.md "$OUT/"
  dropdyn run convergence --phase II --device "$DEVICE" --backend fused --out /tmp/conv-fused --force --no-progress
}
work_tiles() {
  python3 benchmarks/bench_tiles.py --BN 64,128 --BM 32,64 --warps 4 --stages 1
}
work_vgg() {
  vgg_run /tmp/vgg "$VGG_EPOCHS" "$VGG_EVERY" && cp /tmp/vgg/summary.json "$OUT/vgg_summary.json" \
    && cp /tmp/vgg/alignment.png "$OUT/vgg_alignment.png"
}

for s in "${STAGES[@]}"; do
  case "$s" in
  check) stage check 180 60 ;;
  bench) stage bench 150 60 ;;
  vgg-parts) stage vgg-parts 90 45 ;;
  sme) stage sme 240 150 ;;
  width) stage width 120 60 ;;
  convergence) stage convergence 90 40 ;;
  tiles) stage tiles 90 40 ;;
  vgg) stage vgg - 120 ;;
  *) log "$s: unknown stage (check bench vgg-parts sme width convergence tiles vgg)" ;;
  esac
done
for f in /tmp/vgg-parts.log /tmp/vgg.log; do  # the bars' last states: which part, how far
  [ -f "$f" ] && tail -40 "$f" > "$OUT/$(basename "$f" .log)-bar.log"
done
log "session: $(( $(date +%s) - T0 )) s"
ls -l "$OUT"
