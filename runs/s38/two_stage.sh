#!/bin/bash
# Session 38 rule 1: stage 1 (prior dropout 0.25, self-pairs 0.3, 50 min), then stage 2 (no prior dropout,
# lr 2.5e-4, 40 min) from stage 1's final weights. Usage: two_stage.sh OUT SEED1 SEED2 (run from a code copy).
set -e
out=$1
common="--split assets/weights/split.json --image-size 256 --input-size 128 --low-res-fraction 0.75 --fine-thin-only
 --warmup-iterations 25 --fit-schedule-to-time --threads 1 --self-pair-fraction 0.3"
timeout 65m python -m iris_engine.training.run --out "$out/stage1" --init assets/weights/iris2d.pt $common \
  --lr 5e-4 --prior-dropout 0.25 --time-limit-minutes 50 --seed "$2" > "$out/stage1.out" 2>&1
timeout 55m python -m iris_engine.training.run --out "$out/stage2" --init "$out/stage1/final.pt" $common \
  --lr 2.5e-4 --time-limit-minutes 40 --seed "$3" > "$out/stage2.out" 2>&1
