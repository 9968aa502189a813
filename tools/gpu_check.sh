#!/usr/bin/env bash
# The GPU check, in one go (under 8 minutes on one H100): from the project root, on a machine with a
# CUDA device,
#
#     tools/gpu_check.sh
#
#  1. the CUDA tests: CUDA graphs and the compiled neuron loops against eager, bit for bit
#     (tests/test_fast.py; they skip on a machine without a GPU);
#  2. bench.py beside the original at batch 96, T = 8: the original, ours eager, ours compiled,
#     ours compiled + CUDA graphs (the child's steps), and their ratios, in one table.
#
# The original's side needs its code and spikingjelly 0.0.0.0.2 (the original's neuron API):
#   AUTOSNN_ORIGINAL   a checkout of the original AutoSNN code (github nabk89/AutoSNN)
#   AUTOSNN_PEER_SITE  a folder where spikingjelly 0.0.0.0.2 is importable (default .peer-site, which
#                      git ignores). A machine without a package registry gets it carried along:
#                      pip install --no-deps --target .peer-site spikingjelly==0.0.0.0.2   (here, once)
# Without them step 2 times our forms alone (bench.py --device cuda --compile --cuda-graphs).
# Options passed to the script go to bench.py (e.g. --reps 3).
set -euo pipefail
cd "$(dirname "$0")/.."

TESTS_S=${TESTS_S:-200}      # seconds for the CUDA tests
BENCH_S=${BENCH_S:-260}      # seconds for the benchmark
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device here (torch $("$PY" -c 'import torch; print(torch.__version__)')); nothing to check" >&2
    exit 2
fi
card=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)
echo "== $("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "|", torch.cuda.get_device_name(0))') | ${card:-nvidia-smi unavailable}"

echo "== CUDA tests (timeout ${TESTS_S}s)"
tests_rc=0
timeout "$TESTS_S" "$PY" -m pytest -q -p no:cacheprovider tests/test_fast.py -k "cuda" -rs 2>&1 | tail -n 15 \
    || tests_rc=$?
[ "$tests_rc" -eq 0 ] || echo "gpu_check: CUDA tests FAILED or timed out (exit $tests_rc)"

original=${AUTOSNN_ORIGINAL:-}
site=${AUTOSNN_PEER_SITE:-.peer-site}
bench=(bench.py --device cuda --batch 96 --T 8 --compile --cuda-graphs)
if [ -n "$original" ] && PYTHONPATH="$site" "$PY" -c "import spikingjelly.clock_driven" 2>/dev/null; then
    bench+=(--original "$original" --original-site "$site")
else
    echo "gpu_check: the original or spikingjelly (in $site) is missing: timing our forms alone"
    bench+=(--scale-T 8 --scale-batch 96)
fi

echo "== ${bench[*]} $* (timeout ${BENCH_S}s)"
bench_rc=0
timeout "$BENCH_S" "$PY" "${bench[@]}" "$@" || bench_rc=$?
[ "$bench_rc" -eq 0 ] || echo "gpu_check: bench.py FAILED or timed out (exit $bench_rc)"

echo "== gpu_check: CUDA tests exit $tests_rc, bench exit $bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
