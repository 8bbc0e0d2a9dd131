#!/usr/bin/env bash
# Train the shipped digits zoo, skipping checkpoints that exist. Names: <model>-<optimizer>-e<epochs>.pt
#   digits-mlp, digits-cnn, digits-vit x {adamw, adamw-d, l2-adam, l2-adam-d} x {10, 40} epochs (Table I columns),
#   digits-mlp-depth8 (8 tanh hidden layers of 16 units, no normalisation) x 4 optimizers x 40 epochs (the depth
#   effect of the update-magnitude histograms).
# Sizes (d): digits-mlp 2,410, digits-cnn 854 (4 channels), digits-vit 1,490 (4x4 patches, dim 8), depth-8 MLP
# 3,114: small enough that `make demo` builds every dense Hessian in minutes (docs/decisions.md, "The zoo's sizes").
# Hyper-parameters (decided, see docs/decisions.md): b = 64, cosine schedule 3e-3 -> 1e-4 over the run,
# AdamW lambda = 5e-2; AdamW-D c1 = 1e-1; l2-Adam lambda = 1e-3; l2-Adam-D c1 = 2e-3;
# -D variants decay with gamma = 0.995 per iteration (to ~1% of c1 over the 920 steps of 40 epochs,
# the relative decay the paper's gamma = 0.99999 gives over ImageNet training).
# The other optimizers of the papers, 40 epochs on the three digits models: AdamProx lambda = 5e-2 (AdamW's),
# AdamS lambda = 5e-4 (the SWD paper's setting; its effective decay lambda/sqrt(mean v_hat) is recorded),
# AdaL lambda = 1e-3 coupled (l2-Adam's) with its alpha/sqrt(t) step size on top of the cosine schedule.
# Every run records update histograms per epoch (--record-updates). The 40-epoch AdamW and l2-Adam runs also record
# their curvature over training (--curves log: steps 1, 2, 4, ..., 512 and the last), drawn by `wdbound curves`.
set -euo pipefail
cd "$(dirname "$0")/.."
WDBOUND=${WDBOUND:-.venv/bin/wdbound}
OUT=${OUT:-checkpoints}
BUDGETS=${BUDGETS:-"10 40"}
mkdir -p "$OUT"

train_one() {  # name model epochs optimizer [extra args...]
  local name=$1 model=$2 epochs=$3 opt=$4
  shift 4
  local wd extra=()
  case $opt in
    adamw)     wd=5e-2 ;;
    adamw-d)   wd=1e-1; extra=(--wd-gamma 0.995) ;;
    l2-adam)   wd=1e-3 ;;
    l2-adam-d) wd=2e-3; extra=(--wd-gamma 0.995) ;;
    adamprox)  wd=5e-2 ;;
    adams)     wd=5e-4 ;;
    adal)      wd=1e-3 ;;
  esac
  local out="$OUT/$name-$opt-e$epochs.pt"
  [ -f "$out" ] && return 0
  "$WDBOUND" train --arch "$model" --optimizer "$opt" --epochs "$epochs" --lr 3e-3 --schedule cosine \
    --lr-min 1e-4 --wd "$wd" "${extra[@]}" --batch-size 64 --seed 0 --record-updates "$@" --out "$out"
}

for epochs in $BUDGETS; do
  for model in digits-mlp digits-cnn digits-vit; do
    for opt in adamw adamw-d l2-adam l2-adam-d; do
      curves=()
      if [ "$epochs" = 40 ] && { [ "$opt" = adamw ] || [ "$opt" = l2-adam ]; }; then curves=(--curves log); fi
      train_one "$model" "$model" "$epochs" "$opt" "${curves[@]}"
    done
  done
done
for opt in adamw adamw-d l2-adam l2-adam-d; do
  train_one digits-mlp-depth8 digits-mlp 40 "$opt" --arch-kwarg depth=8 --arch-kwarg hidden=16
done
for model in digits-mlp digits-cnn digits-vit; do
  for opt in adamprox adams adal; do
    train_one "$model" "$model" 40 "$opt"
  done
done
