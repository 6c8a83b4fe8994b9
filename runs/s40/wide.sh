#!/bin/bash
# Session 40 rule 1: run W (decoder width 32), started or continued (any extra argument, e.g. --resume).
# Run from the repository root; the code copy in runs/s40/code keeps the run's code fixed across sessions.
set -e
out=$(pwd)/runs/s40/W
cd runs/s40/code
IRIS_SHARED_DATA=/work/shared/data OMP_NUM_THREADS=1 timeout 110m python -m iris_engine.training.run --out "$out" \
  --init assets/weights/iris2d.pt --split assets/weights/split.json --decoder-channels 32 --image-size 256 \
  --input-size 128 --low-res-fraction 0.75 --fine-thin-only --lr 5e-4 --warmup-iterations 25 --threads 1 \
  --self-pair-fraction 0.3 --iterations 3000 --time-limit-minutes 95 --seed 66 "$@" >> "$out.out" 2>&1
