#!/usr/bin/env bash
# One run on a GPU machine, at most 8 minutes, every stage capped; everything lands in ONE folder: long-format CSVs
# (device, versions, git sha and date on every row), PNGs, pytest JUnit XML, stages.csv (rc and seconds per stage)
# and run_gpu.log.
#
#   bash benchmarks/run_gpu.sh [OUT_DIR]            # GPU (default folder: $OUT, else benchmarks/results/run-<utc>)
#   bash benchmarks/run_gpu.sh --smoke [OUT_DIR]    # CPU: the same stages and scripts on tiny shapes (CI runs it)
#
# Written for an offline image (Python 3.12, torch 2.11+cu130, triton 3.6): nothing is downloaded. If
# `sparse24.kernels` is not importable it installs the checkout with `pip install --no-build-isolation --no-deps -e .`
# (no setuptools download), and stops at once if that still fails. PYTHON picks the interpreter (default python3);
# BUDGET_S the total seconds (default 480).
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
PY=${PYTHON:-python3}
DEST=${1:-${OUT:-benchmarks/results/run-$(date -u +%Y%m%d-%H%M%S)}}
mkdir -p "$DEST"
exec > >(tee "$DEST/run_gpu.log") 2>&1
BUDGET=${BUDGET_S:-480}
START=$SECONDS
echo "stage,rc,seconds" > "$DEST/stages.csv"

stage() {  # stage NAME CAP_S CMD...: at most min(CAP_S, budget left) seconds; a failure is recorded, not fatal
  local name=$1 cap=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START)))
  ((left < cap)) && cap=$left
  if ((cap < 5)); then
    echo "== $name: skipped (budget spent)"
    echo "$name,skipped,0" >> "$DEST/stages.csv"
    return 0
  fi
  echo "== $name (cap ${cap}s)"
  local t0=$SECONDS rc=0
  timeout --kill-after=10 "$cap" "$@" || rc=$?
  echo "$name,$rc,$((SECONDS - t0))" >> "$DEST/stages.csv"
  ((rc != 0)) && echo "WARNING: stage $name exited with $rc"
  return 0
}

echo "== install check"
if ! $PY -c "import sparse24.kernels.backends" 2>/dev/null; then
  $PY -m pip install -q --no-build-isolation --no-deps -e . || echo "pip install -e . failed"
  if ! $PY -c "import sparse24.kernels.backends"; then  # checked again only after an install (~1 s a check)
    echo "FATAL: 'import sparse24.kernels.backends' fails; install the checkout (pip install --no-build-isolation -e .)"
    exit 2
  fi
fi

if ((SMOKE)); then
  ARGS=(--smoke --out-dir "$DEST")
  export TRITON_INTERPRET=1  # the kernel stage runs Triton's interpreter on the CPU
else
  ARGS=(--out-dir "$DEST")
  unset TRITON_INTERPRET
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'run_gpu.sh needs a CUDA GPU (or --smoke)')" \
    || exit 3
fi

stage environment 15 $PY - <<'PY'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton none")
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), "cc", torch.cuda.get_device_capability(),
          "cuSPARSELt", torch.backends.cusparselt.version(), "max alg id (torch's table)",
          torch.backends.cusparselt.get_max_alg_id())
PY
if ((!SMOKE)); then
  stage tests 100 $PY -m pytest tests/kernels -q -m "not slow" -p no:cacheprovider --durations=5 \
    --junitxml="$DEST/pytest_kernels.xml"
fi
if ((!SMOKE)); then
  stage probe 30 $PY benchmarks/probe_gpu.py --out-dir "$DEST"
fi
KSHAPES=(--shapes llama2-7b-mlp-up llama3-8b-mlp-down)
GSHAPES=(--shapes llama2-7b-mlp-up llama3-70b-mlp-up)
if ((SMOKE)); then KSHAPES=(); GSHAPES=(); fi
stage kernels 30 $PY benchmarks/bench_kernels.py "${ARGS[@]}" "${KSHAPES[@]}"
stage gemm_bf16 100 $PY benchmarks/bench_gemm.py "${ARGS[@]}" --dtype bf16
stage gemm_fp16 30 $PY benchmarks/bench_gemm.py "${ARGS[@]}" --dtype fp16 "${GSHAPES[@]}"
stage linear 45 $PY benchmarks/bench_linear.py "${ARGS[@]}"
stage block 45 $PY benchmarks/bench_block.py "${ARGS[@]}"
stage generate 35 $PY benchmarks/bench_generate.py "${ARGS[@]}"
shopt -s nullglob
CSVS=("$DEST"/gemm_*.csv "$DEST"/linear_*.csv "$DEST"/block_*.csv)
if ((${#CSVS[@]})); then
  stage plot 15 $PY benchmarks/plot.py "${CSVS[@]}" --out-dir "$DEST"
fi
if ((!SMOKE)); then  # last: raw misuse of the kernel may leave the CUDA context unusable
  stage hazards 20 $PY benchmarks/probe_gpu.py --out-dir "$DEST" --hazards
fi
echo "== done in $((SECONDS - START))s; results in $DEST"
cat "$DEST/stages.csv"
ls -l "$DEST"
# on the GPU every stage's failure is data (recorded above); in --smoke (CI) any failed stage fails the run
if ((SMOKE)) && grep -qv -e '^stage,' -e ',0,' "$DEST/stages.csv"; then
  echo "FAILED: a smoke stage did not exit 0 (see stages.csv)"
  exit 1
fi
