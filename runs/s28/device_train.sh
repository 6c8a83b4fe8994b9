#!/bin/bash
# The README's GPU recipe as one call on a lent GPU machine (carry runs/train_bank_256.npz and .whl, the nibabel
# wheel; about 8-9 minutes with the defaults, under the 10-minute limit of one call): training from the shipped
# weights, the click refiner for the result, and the files a session needs copied to $OUT (final.pt under 16 MB).
# Dry-run on the CPU with tiny limits: DEVICE=cpu BATCH=4 TRAIN_MIN=0.5 WORKERS=2 REFINER_MIN=0.3 OUT=/tmp/out
set -eo pipefail
OUT=${OUT:-/tmp/devout}
DEVICE=${DEVICE:-cuda}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -m iris_engine.training.run --out /tmp/iris2d_gpu --bank runs/train_bank_256.npz \
  --split assets/weights/split.json --init assets/weights/iris2d.pt --batch-size ${BATCH:-32} --lr 1.5e-3 \
  --iterations 20000 --low-res-fraction 0.5 --fit-schedule-to-time --time-limit-minutes ${TRAIN_MIN:-5} \
  --loader-workers ${WORKERS:-14} --device $DEVICE 2>&1 | tr '\r' '\n' | sed "/^train:/d" | tee $OUT/train.txt
python3 -m iris_engine.training.click_training --checkpoint /tmp/iris2d_gpu/final.pt --split assets/weights/split.json \
  --bank runs/train_bank_256.npz --init assets/weights/click_refiner.pt --init-any-model --out /tmp/refiner_gpu \
  --loader-workers ${WORKERS:-14} --device $DEVICE --time-limit-minutes ${REFINER_MIN:-1.3} 2>&1 | tail -n 5 | tee $OUT/refiner.txt
cp /tmp/iris2d_gpu/final.pt /tmp/iris2d_gpu/train_log.jsonl /tmp/iris2d_gpu/summary.json /tmp/refiner_gpu/click_refiner.pt $OUT/
ls -la $OUT
