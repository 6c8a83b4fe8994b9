#!/bin/bash
# Session 39 rule 1 measures: wait for the runs, measure P and Q side by side, then the two soups side by side.
# Run from the repository root: orchestrate.sh CODE_COPY
code=$1; d=runs/s39
while [ ! -f "$code/out/P/summary.json" ] || [ ! -f "$code/out/Q/summary.json" ]; do sleep 30; done
cp "$code/out/P/final.pt" "$d/P.pt"; cp "$code/out/Q/final.pt" "$d/Q.pt"
cp "$code/out/P.out" "$code/out/Q.out" "$d/"
runs/s39/measure.sh "$d/P.pt" P & runs/s39/measure.sh "$d/Q.pt" Q & wait
python runs/s38/soup_probe.py "$d/soup_PQ.pt" "$d/P.pt" "$d/Q.pt" > "$d/soup_PQ.log" 2>&1
python runs/s39/reprior.py assets/weights/iris2d.pt "$d/shipped128.pt" 128 > "$d/soup_PQS.log" 2>&1
python runs/s38/soup_probe.py "$d/soup_PQS.pt" "$d/P.pt" "$d/Q.pt" "$d/shipped128.pt" >> "$d/soup_PQS.log" 2>&1
runs/s39/measure.sh "$d/soup_PQ.pt" soupPQ & runs/s39/measure.sh "$d/soup_PQS.pt" soupPQS & wait
touch "$d/orchestrate.done"
