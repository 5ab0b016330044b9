#!/usr/bin/env bash
# llm-compressor 0.14 in ITS OWN venv (never the project's), built once: bash benchmarks/llmc_venv.sh [VENV=/tmp/llmc-venv]
# Used by llmcompressor_compare.sh and pruning_quality.py (its llmc-* rows). Needs the package registries (PyPI).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd); VENV=${1:-/tmp/llmc-venv}
[ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llmcompressor" 2>/dev/null && exit 0
PY=$(readlink -f "$ROOT/.venv/bin/python")
"$PY" -m venv "$VENV"
WHEEL=$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1 || true)
if [ -n "$WHEEL" ]; then "$VENV/bin/pip" install -q "$WHEEL"
else "$VENV/bin/pip" install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu; fi
"$VENV/bin/pip" install -q "llmcompressor==0.14.0.1" "torchao==0.18.*" "transformers==5.17.*" datasets
