#!/usr/bin/env bash
# Train the shipped digits zoo: 3 models x 4 optimizers, skipping checkpoints that exist.
# Hyper-parameters (decided, see docs/zoo.md): 40 epochs, b = 64, cosine schedule 3e-3 -> 1e-4,
# AdamW lambda = 5e-2; AdamW-D c1 = 1e-1; l2-Adam lambda = 1e-3; l2-Adam-D c1 = 2e-3;
# -D variants decay with gamma = 0.995 per iteration (to ~1% of c1 over the 920 steps,
# the relative decay the paper's gamma = 0.99999 gives over ImageNet training).
set -euo pipefail
cd "$(dirname "$0")/.."
WDBOUND=${WDBOUND:-.venv/bin/wdbound}
OUT=${OUT:-checkpoints}
EPOCHS=${EPOCHS:-40}
mkdir -p "$OUT"
for model in digits-mlp digits-cnn digits-vit; do
  for opt in adamw adamw-d l2-adam l2-adam-d; do
    case $opt in
      adamw)     wd=5e-2; extra=() ;;
      adamw-d)   wd=1e-1; extra=(--wd-gamma 0.995) ;;
      l2-adam)   wd=1e-3; extra=() ;;
      l2-adam-d) wd=2e-3; extra=(--wd-gamma 0.995) ;;
    esac
    out="$OUT/$model-$opt.pt"
    [ -f "$out" ] && continue
    "$WDBOUND" train --model "$model" --optimizer "$opt" --epochs "$EPOCHS" --lr 3e-3 --schedule cosine \
      --lr-min 1e-4 --wd "$wd" "${extra[@]}" --batch-size 64 --seed 0 --out "$out"
  done
done
