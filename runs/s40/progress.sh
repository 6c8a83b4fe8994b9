#!/bin/bash
# Session 40: measure run W's checkpoint at iterations 250 and 500 (support = query and dev one-shot, with the
# prior) as progress, not as candidates (rule 1). Run from the repository root.
d=runs/s40
export IRIS_SHARED_DATA=/work/shared/data OMP_NUM_THREADS=1
for it in 250 500; do
  while ! grep -q "\"iteration\": $it," $d/W/train_log.jsonl 2>/dev/null; do sleep 20; done
  sleep 60
  cp $d/W/last.pt $d/W_it$it.pt
  iris sanity --checkpoint $d/W_it$it.pt --out $d/sanity_it$it --threads 1 > $d/progress_it$it.log 2>&1
  python runs/s35/dev_oneshot.py $d/W_it$it.pt $d/dev_it$it.json >> $d/progress_it$it.log 2>&1
done
