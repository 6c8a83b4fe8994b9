#!/bin/bash
# Session 39 rule 1: a warm start of the shipped weights with the support-mask prior at 128 px.
# Usage: prior128.sh OUT SEED (run from a code copy).
set -e
timeout 100m python -m iris_engine.training.run --out "$1" --init assets/weights/iris2d.pt \
  --split assets/weights/split.json --image-size 256 --input-size 128 --low-res-fraction 0.75 --fine-thin-only \
  --lr 5e-4 --warmup-iterations 25 --fit-schedule-to-time --threads 1 --self-pair-fraction 0.3 \
  --prior-size 128 --time-limit-minutes 85 --seed "$2" > "$1.out" 2>&1
