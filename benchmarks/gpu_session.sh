#!/usr/bin/env bash
# One device lease, one call (<= 8 minutes on an H100-class GPU, autotuning off):
#   1. benchmarks/check_gpu.py   -- every mask family, fwd+bwd, fp32/fp16/bf16, GQA, split-KV decode
#   2. benchmarks/attention.py   -- ours vs SDPA vs compiled FlexAttention; causal, prefix-LM,
#                                   sliding-window, set-based and tree masks; N = 2048, 8192;
#                                   fwd and fwd+bwd; TFLOP/s
# Writes OUTDIR/check.json, OUTDIR/attention-*.json + .png, OUTDIR/env.txt and OUTDIR/session.log.
#
#   benchmarks/gpu_session.sh OUTDIR            # on the GPU
#   benchmarks/gpu_session.sh OUTDIR --smoke    # CPU, Triton interpreter, tiny sizes (checks the script)
#
# Exit status: 0 when the check passed and the benchmark ran; the check's failure does not stop
# the benchmark (its numbers are still worth having), but the script then exits 1.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_session.sh OUTDIR [--smoke]}
MODE=${2:-}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PY=${PYTHON:-python}
[ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && PY="$ROOT/.venv/bin/python"
mkdir -p "$OUT"
export COMPANION_AUTOTUNE=${COMPANION_AUTOTUNE:-0}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec > >(tee "$OUT/session.log") 2>&1
echo "gpu_session: $(date -u +%FT%TZ) mode=${MODE:-gpu} autotune=$COMPANION_AUTOTUNE"
"$PY" -c "from companion.device import env_report; print(env_report())" > "$OUT/env.txt" 2>&1 || true
if [ "$MODE" = "--smoke" ]; then
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
  "$PY" "$HERE/check_gpu.py" --cpu --quick --json "$OUT/check.json"; check=$?
  "$PY" "$HERE/attention.py" --smoke --out "$OUT"; bench=$?
else
  t0=$(date +%s)
  timeout 240 "$PY" "$HERE/check_gpu.py" --json "$OUT/check.json"; check=$?
  echo "check: rc=$check in $(( $(date +%s) - t0 )) s"
  t0=$(date +%s)
  timeout 300 "$PY" "$HERE/attention.py" --out "$OUT" --masks causal prefix sliding set tree --reps 5; bench=$?
  echo "benchmark: rc=$bench in $(( $(date +%s) - t0 )) s"
fi
echo "gpu_session: check rc=$check, benchmark rc=$bench"
[ "$check" -eq 0 ] && [ "$bench" -eq 0 ]
