#!/usr/bin/env bash
# Side by side with llm-compressor 0.14 (SparseGPTModifier / WandaPruningModifier, mask_structure="2:4") on the same
# model, calibration windows and perplexity windows as benchmarks/pruning_quality.py. llm-compressor goes into ITS
# OWN venv under /tmp (never /work/main/.venv). Threads are pinned (torch + OMP/MKL) to THREADS for both tools.
#   bash benchmarks/llmcompressor_compare.sh [NSAMPLES=32] [SEQLEN=512] [THREADS=2]
# Writes benchmarks/results/llmcompressor_compare.md (+ .json). Work files: $WORK (default out/llmc).
set -euo pipefail
NS=${1:-32}; SL=${2:-512}; TH=${3:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd); WORK=${WORK:-$ROOT/out/llmc}; VENV=${VENV:-/tmp/llmc-venv}
export OMP_NUM_THREADS=$TH MKL_NUM_THREADS=$TH
mkdir -p "$WORK"
bash "$ROOT/benchmarks/llmc_venv.sh" "$VENV"
MAIN="$ROOT/.venv/bin/python"
# 1. the exact calibration windows sparse24 uses (same tokenizer, text, seed), as a tensor file
"$MAIN" "$ROOT/benchmarks/llmcompressor_compare.py" --calib "$WORK/calib.pt" "$NS" "$SL"
evalppl() {  # model folder, out prefix: the pruning_quality windows (8 x 2048, 32 x 512)
  "$MAIN" -m sparse24 eval "$1" --ppl boolq --seqlen 2048 --max-windows 8 --batch-size 1 --threads "$TH" \
     --no-progress --out "$2.ppl2048.json" > /dev/null
  "$MAIN" -m sparse24 eval "$1" --ppl boolq --seqlen 512 --max-windows 32 --batch-size 1 --threads "$TH" \
     --no-progress --out "$2.ppl512.json" > /dev/null
}
for METHOD in sparsegpt wanda; do
  # 2. llm-compressor oneshot, timed, threads pinned
  [ -f "$WORK/llmc-$METHOD.ppl512.json" ] || {
    /usr/bin/time -v "$VENV/bin/python" "$ROOT/benchmarks/llmcompressor_compare.py" "$WORK/calib.pt" "$METHOD" \
       "$WORK/llmc-$METHOD" "$TH" > "$WORK/llmc-$METHOD.log" 2> "$WORK/llmc-$METHOD.time"
    evalppl "$WORK/llmc-$METHOD" "$WORK/llmc-$METHOD"; }
  # 3. sparse24 on the same protocol
  [ -f "$WORK/s24-$METHOD.ppl512.json" ] || {
    /usr/bin/time -v "$MAIN" -m sparse24 prune --method "$METHOD" --nsamples "$NS" --seqlen "$SL" --threads "$TH" \
       --out "$WORK/s24-$METHOD" --overwrite --no-progress > "$WORK/s24-$METHOD.log" 2> "$WORK/s24-$METHOD.time"
    evalppl "$WORK/s24-$METHOD" "$WORK/s24-$METHOD"; }
done
"$MAIN" "$ROOT/benchmarks/llmcompressor_compare.py" --report "$WORK" "$NS" "$SL" "$TH" "$VENV"
