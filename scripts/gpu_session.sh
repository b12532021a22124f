#!/usr/bin/env bash
# The GPU measurements of docs/engine.md, in four calls of a GPU machine with no network
# (each under 10 minutes), from the repository root there, with the wheels of
# scripts/gpu_wheels.sh carried in .whl/ (see docs/development.md, "On a GPU machine"):
#
#   scripts/gpu_session.sh tests        the CUDA tests (the fused kernels compiled for real, GPU against CPU),
#                                       then the alignment estimator's HVPs on a full VGG16 (bench_alignment)
#   scripts/gpu_session.sh bench        bench_step at widths 5,000 and 10⁶, the fused kernels' tiles, the width sweep
#   scripts/gpu_session.sh vgg          alignment on VGG16 / synthetic CIFAR-10 (timed), in the background;
#                                       waits for it up to $WAIT seconds (default 540)
#   scripts/gpu_session.sh experiments  waits for the VGG16 run to end (if still running) until it has run
#                                       15 minutes (at most $WAIT s, default 330), stops it past that, then
#                                       the sme-order-gpu and convergence-II-gpu recipes of scripts/figures.py,
#                                       and convergence II again on the fused step
#
# The machine goes back 30 s after a call ends, and the VGG16 run with it: call `experiments`
# at once after `vgg`, before reading its output.
#
# Everything it measures lands in $OUT (default /tmp/gpu-out): *.md tables, logs, the recipe's
# figure, docs/results.json and docs/results.md with the GPU entries added. $VGG_ARGS replaces the
# VGG16 run's sized settings (VGG_ARGS="" for the defaults); DEVICE=cpu rehearses the vgg stage on
# a CPU machine.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
stage=${1:?usage: scripts/gpu_session.sh tests|bench|vgg|experiments}

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null || exit 1
DEVICE=${DEVICE:-cuda}
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')" | tee "$OUT/versions.txt"

case "$stage" in
tests)
  # (pyproject's addopts has -q already: a second one would drop pytest's summary line)
  python3 -m pytest -rs -p no:cacheprovider --durations=5 tests/test_fused.py tests/test_engine.py \
    tests/test_divergence.py tests/test_sme.py tests/test_host_reads.py tests/test_graph.py tests/test_benchmarks.py \
    > "$OUT/tests.log" 2>&1
  python3 -m pytest -rs -p no:cacheprovider tests/test_experiments_small.py -k "cuda or vgg" >> "$OUT/tests.log" 2>&1
  grep -E "passed|failed|Error|FAILED" "$OUT/tests.log" | tail -30 | tee "$OUT/tests.txt"
  python3 benchmarks/bench_alignment.py --samples 20 --device cuda --vgg-width 1 --vgg-batch 1000 2>&1 \
    | tail -6 | tee "$OUT/hvp.md"
  ;;
bench)
  {
    python3 benchmarks/bench_step.py --device cuda
    python3 benchmarks/bench_step.py --device cuda --width 1000000 --repeats 10 --run-steps 30
    python3 benchmarks/bench_tiles.py --BN 64,128 --BM 32,64 --warps 4 --stages 1
    python3 benchmarks/bench_width.py --device cuda --backends torch,fused --steps 30 --timeout 120
  } 2>&1 | tee "$OUT/bench.md"
  ;;
vgg)
  # the Figure 3(b) run sized for 15 minutes by a FLOP count (docs/alignment.md); VGG_ARGS="" runs the defaults
  VGG_SIZED="--pairs 0.05:0.5 --epochs 20 --every 5 --samples 20 --batch 500"
  python3 scripts/synthetic_cifar.py /tmp/cifar >/dev/null
  rm -rf /tmp/vgg && date +%s > /tmp/vgg.start
  rm -f /tmp/vgg.end /tmp/vgg.rc /tmp/vgg.stopped
  # shellcheck disable=SC2016
  setsid nohup bash -c 'dropdyn run alignment --model vgg16 --dataset cifar10 --data-dir /tmp/cifar --device "$1" \
      --noise-steps 0 --progress --out /tmp/vgg $2 > /tmp/vgg.log 2>&1; echo $? > /tmp/vgg.rc; date +%s > /tmp/vgg.end' \
      _ "$DEVICE" "${VGG_ARGS-$VGG_SIZED}" >/dev/null 2>&1 < /dev/null &
  for _ in $(seq "${WAIT:-540}"); do [ -f /tmp/vgg.end ] && break; sleep 1; done
  ;;
experiments)
  # the VGG16 run may take 15 minutes (the issue's budget) but not the GPU from the recipes beyond
  for _ in $(seq "${WAIT:-330}"); do
    [ -f /tmp/vgg.end ] || [ ! -f /tmp/vgg.start ] && break
    [ $(( $(date +%s) - $(cat /tmp/vgg.start) )) -ge 900 ] && break
    sleep 1
  done
  if [ -f /tmp/vgg.start ] && [ ! -f /tmp/vgg.end ]; then
    pkill -f "dropdyn run alignment" && sleep 5
    echo "stopped unfinished after $(( $(date +%s) - $(cat /tmp/vgg.start) )) s (the budget: 900 s)" > /tmp/vgg.stopped
  fi
  ;;
*)
  echo "unknown stage $stage: tests, bench, vgg or experiments" >&2
  exit 2
  ;;
esac

if [ "$stage" = vgg ] || [ "$stage" = experiments ]; then  # the VGG16 run's state
  if [ -f /tmp/vgg.stopped ]; then
    echo "vgg16 alignment: $(cat /tmp/vgg.stopped)" | tee "$OUT/vgg.txt"
  elif [ -f /tmp/vgg.end ]; then
    echo "vgg16 alignment: exit $(cat /tmp/vgg.rc), $(( $(cat /tmp/vgg.end) - $(cat /tmp/vgg.start) )) s" \
      | tee "$OUT/vgg.txt"
    cp /tmp/vgg/summary.json "$OUT/vgg_summary.json" 2>/dev/null
    cp /tmp/vgg/alignment.png "$OUT/vgg_alignment.png" 2>/dev/null
  elif [ -f /tmp/vgg.start ]; then
    echo "vgg16 alignment: still running after $(( $(date +%s) - $(cat /tmp/vgg.start) )) s" | tee "$OUT/vgg.txt"
  else
    echo "vgg16 alignment: not started on this machine (a fresh one?)" | tee "$OUT/vgg.txt"
  fi
  tr '\r' '\n' < /tmp/vgg.log 2>/dev/null | tail -40 > "$OUT/vgg.log"  # the bar's last states: which part, how far
fi

if [ "$stage" = experiments ]; then
  python3 scripts/figures.py --only sme-order-gpu convergence-II-gpu 2>&1 | tail -20 | tee "$OUT/figures.log"
  dropdyn run convergence --phase II --device cuda --backend fused --out /tmp/conv-fused --no-progress 2>&1 \
    | tail -8 | tee "$OUT/convergence_fused.txt"
  cp docs/results.json docs/results.md docs/sme_order_gpu.png "$OUT/" 2>/dev/null
fi
ls -l "$OUT"
