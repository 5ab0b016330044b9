#!/usr/bin/env bash
# One call on a GPU machine: check/install what is missing, run the GPU tests, the microbenchmarks and the plots.
#   bash benchmarks/run_gpu.sh            # ~5-7 min on an H100; results in benchmarks/results/*_cuda.csv + *.png
# Environment: QUICK=1 trims the GEMM/linear grid (fewer shapes and M values) for a first look.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=benchmarks/results
mkdir -p "$OUT"
LOG="$OUT/run_gpu.log"
exec > >(tee "$LOG") 2>&1

echo "== environment"
$PY - <<'PY'
import torch
assert torch.cuda.is_available(), "run_gpu.sh needs a CUDA GPU"
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(),
      "cc", torch.cuda.get_device_capability(), "cuSPARSELt", torch.backends.cusparselt.version())
PY
for mod in triton matplotlib pytest; do
  $PY -c "import $mod" 2>/dev/null || $PY -m pip install -q "$mod" || echo "WARNING: could not install $mod"
done
$PY -c "import sparse24.kernels" 2>/dev/null || $PY -m pip install -q --no-deps -e . || echo "WARNING: pip -e . failed"

echo "== kernel tests compiled on the GPU (same tests as the CPU interpreter run) + gpu-marked backend tests"
unset TRITON_INTERPRET
$PY -m pytest tests/kernels -q -m "not slow" -p no:cacheprovider --durations=5 || echo "WARNING: tests failed (see above)"

if [ "${QUICK:-0}" = "1" ]; then
  SHAPES=(--shapes llama2-7b-mlp-up llama3-8b-mlp-down vitl-mlp-fc1); TOKENS=(--tokens 1 64 1024 16384)
else
  SHAPES=(); TOKENS=()
fi
echo "== microbenchmarks"
timeout 120 $PY benchmarks/bench_kernels.py --shapes llama2-7b-mlp-up llama3-8b-mlp-down gpt2-mlp-fc || echo "WARNING: bench_kernels"
timeout 240 $PY benchmarks/bench_gemm.py "${SHAPES[@]}" "${TOKENS[@]}" || echo "WARNING: bench_gemm"
timeout 150 $PY benchmarks/bench_linear.py --shapes llama2-7b-mlp-up llama3-8b-mlp-down vitl-mlp-fc1 gpt2-mlp-fc \
  --tokens 1024 4096 16384 || echo "WARNING: bench_linear"

echo "== plots"
$PY benchmarks/plot.py "$OUT/gemm_cuda.csv" "$OUT/linear_cuda.csv" || echo "WARNING: plot"
ls -l "$OUT"
