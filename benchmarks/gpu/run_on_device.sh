#!/usr/bin/env bash
# On the GPU machine, in the repository root, with .whl and .gpu-data carried (prepare_carry.sh):
# install the wheels, then the eager benchmark (tiny, large) and the compiled one (tiny), each under its
# own time bound so that whatever finished comes back. Writes into $OUT (default benchmarks/results).
#   EAGER_S=330 COMPILE_S=230 benchmarks/gpu/run_on_device.sh        # fits one 10-minute device call
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.txt" 2>&1
timeout "${EAGER_S:-330}" python3 benchmarks/bench_gpu.py --model tiny,large --runs "${RUNS:-2}" \
    --out "$OUT/gpu-eager.md" > "$OUT/gpu-eager.log" 2>&1
echo "eager benchmark: exit $?"
timeout "${COMPILE_S:-230}" python3 benchmarks/bench_gpu.py --model tiny --runs "${RUNS:-2}" --long-slices 0 \
    --compile "${COMPILE_MODE:-reduce-overhead}" --compile-cache /tmp/sam2-3d-compile-cache \
    --out "$OUT/gpu-compile.md" > "$OUT/gpu-compile.log" 2>&1
echo "compiled benchmark: exit $?"
tail -n 40 "$OUT"/gpu-*.md 2>/dev/null || tail -n 40 "$OUT"/gpu-*.log
