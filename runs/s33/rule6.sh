#!/usr/bin/env bash
# Rule 6: 4 candidates x 2 dev samples, two at a time (one per core).
cd "$(dirname "$0")/../.."
run() {  # name file weight seed queries
  DEV_SEED=$4 DEV_QUERIES=$5 python runs/s33/dev_seq.py runs/s33/r6_$1 --sequential=$2 sequential_learned_weight=$3 \
    > runs/s33/r6_$1.log 2>&1
}
for file in rule4 candidate; do
  for weight in 0.7 1.0; do
    run ${file}_w${weight}_s0 runs/s33/${file}_sequential.pt $weight 0 6 &
    run ${file}_w${weight}_s1 runs/s33/${file}_sequential.pt $weight 1 12
    wait
  done
done
