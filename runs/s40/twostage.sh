#!/bin/bash
# Session 40 rule 2: run L stage 1 (prior dropout 0.25), started or continued (extra arguments, e.g. --resume).
# Run from the repository root; the code copy in runs/s40/code keeps the run's code fixed across sessions.
set -e
out=$(pwd)/runs/s40/L
cd runs/s40/code
IRIS_SHARED_DATA=/work/shared/data OMP_NUM_THREADS=1 timeout 105m python -m iris_engine.training.run --out "$out" \
  --init assets/weights/iris2d.pt --split assets/weights/split.json --image-size 256 --input-size 128 \
  --low-res-fraction 0.75 --fine-thin-only --lr 3e-4 --warmup-iterations 25 --threads 1 --self-pair-fraction 0.3 \
  --prior-dropout 0.25 --iterations 1500 --time-limit-minutes 90 --seed 67 "$@" >> "$out.out" 2>&1
