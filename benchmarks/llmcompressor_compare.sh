#!/usr/bin/env bash
# Side by side with llm-compressor 0.14 (SparseGPTModifier / WandaPruningModifier, mask_structure="2:4") on the same
# model, calibration windows and eval text. llm-compressor goes into ITS OWN venv (never /work/main/.venv).
#   bash benchmarks/llmcompressor_compare.sh [NSAMPLES] [SEQLEN] [THREADS]
# NOT YET RUN (see the report); numbers it prints are the ones to put in results/pruning_quality.md.
set -euo pipefail
NS=${1:-128}; SL=${2:-2048}; TH=${3:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd); WORK=${WORK:-$ROOT/out/llmc}; VENV=$WORK/venv
mkdir -p "$WORK"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu || "$VENV/bin/pip" install -q "torch==2.13.0"
  "$VENV/bin/pip" install -q "llmcompressor==0.14.0.1" "torchao==0.18.*" "transformers==5.17.*" datasets
fi
MAIN="$ROOT/.venv/bin/python"
# 1. the exact calibration windows sparse24 uses (same tokenizer, text, seed), as a tensor file
"$MAIN" - "$WORK/calib.pt" "$NS" "$SL" <<'PY'
import sys, torch
from transformers import AutoTokenizer
from sparse24.eval.data import calibration_samples, read_text, token_windows
from sparse24.prune.model_io import default_model_dir
tok = AutoTokenizer.from_pretrained(default_model_dir())
ids = calibration_samples(token_windows(tok, read_text("calib")), int(sys.argv[2]), int(sys.argv[3]), 0)
torch.save({"ids": ids, "model": str(default_model_dir())}, sys.argv[1])
PY
# 2. llm-compressor oneshot, timed, threads pinned
for METHOD in sparsegpt wanda; do
  "$VENV/bin/python" "$ROOT/benchmarks/llmcompressor_compare.py" "$WORK/calib.pt" "$METHOD" "$WORK/llmc-$METHOD" "$TH"
  "$MAIN" -m sparse24 eval "$WORK/llmc-$METHOD" --ppl boolq --seqlen 2048 --threads "$TH" --out "$WORK/llmc-$METHOD.json"
done
# 3. sparse24 on the same protocol
for METHOD in sparsegpt wanda; do
  /usr/bin/time -v "$MAIN" -m sparse24 prune --method "$METHOD" --nsamples "$NS" --seqlen "$SL" --threads "$TH" \
     --out "$WORK/s24-$METHOD" --overwrite --no-progress 2> "$WORK/s24-$METHOD.time"
  "$MAIN" -m sparse24 eval "$WORK/s24-$METHOD" --ppl boolq --seqlen 2048 --threads "$TH" --out "$WORK/s24-$METHOD.json"
done
grep -h "Elapsed\|Maximum resident" "$WORK"/*.time || true
