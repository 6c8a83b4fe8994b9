#!/bin/bash
# Session 38: the four measures of rule 1 for one checkpoint, one thread (run from the repository root).
# Usage: [MEASURE_DIR=runs/sNN] measure.sh CKPT NAME -> runs/s38/ (or MEASURE_DIR)/{sanity_NAME,flatprior_NAME,dev_NAME.json,dev_flatprior_NAME.json}
set -e
ck=$1; name=$2; d=${MEASURE_DIR:-runs/s38}
export IRIS_SHARED_DATA=${IRIS_SHARED_DATA:-/work/shared/data} OMP_NUM_THREADS=1
iris sanity --checkpoint "$ck" --out "$d/sanity_$name" --threads 1 > "$d/measure_$name.log" 2>&1
python runs/s35/dev_oneshot.py "$ck" "$d/dev_$name.json" >> "$d/measure_$name.log" 2>&1
python runs/s36/prior_probe.py "$ck" "$d/flatprior_$name" flat >> "$d/measure_$name.log" 2>&1
python runs/s36/prior_probe.py "$ck" "$d/dev_flatprior_$name.json" flat dev >> "$d/measure_$name.log" 2>&1
