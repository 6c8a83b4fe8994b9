#!/bin/bash
# Session 40: when this session's parts of runs W and L have ended, measure them side by side (progress, rules 1-2):
# W with the prior (support = query, dev), L with the prior and flat (session 38's four measures).
d=runs/s40
export IRIS_SHARED_DATA=/work/shared/data OMP_NUM_THREADS=1
while [ ! -f $d/W/summary.json ] || [ ! -f $d/L/summary.json ]; do sleep 30; done
(iris sanity --checkpoint $d/W/final.pt --out $d/sanity_W --threads 1 > $d/measure_W.log 2>&1
 python runs/s35/dev_oneshot.py $d/W/final.pt $d/dev_W.json >> $d/measure_W.log 2>&1) &
MEASURE_DIR=$d runs/s38/measure.sh $d/L/final.pt L &
wait
touch $d/finish.done
