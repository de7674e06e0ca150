#!/usr/bin/env bash
# nanoGPT's CPU "baby GPT" recipe on Tiny Shakespeare with the gpt2 preset:
# 4 layers, 4 heads, 128 dim, context 64, batch 12, lr 1e-3 cosine to 1e-4 over 2000 steps,
# 100 warmup, beta2 0.99, no dropout. nanoGPT reaches val loss 1.886 at step 2000.
# Usage: LMLAB_DATA_DIR=/path/with/tinyshakespeare.txt bench/baby_shakespeare.sh [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
export LMLAB_DATA_DIR="${LMLAB_DATA_DIR:-../shared/data}"
exec .venv/bin/lmlab train --preset gpt2 --data shakespeare \
  --layers 4 --heads 4 --dim 128 --context 64 --batch 12 --dropout 0 \
  --lr 1e-3 --train.min_lr 1e-4 --max-steps 2000 --train.warmup_steps 100 --train.beta2 0.99 \
  --train.eval_interval 250 --train.eval_iters 200 --run-tag baby-shakespeare "$@"
