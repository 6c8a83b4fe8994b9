#!/bin/bash
# The annotation-loop browser tests with N busy loops beside them (a slower, loaded CI machine), R rounds.
# Usage: bash runs/s34/loaded_e2e.sh N R LOGDIR
n=${1:-3}; rounds=${2:-3}; out=${3:-runs/s34/loaded}
mkdir -p "$out"
pids=()
for _ in $(seq "$n"); do python -c "while True: pass" & pids+=($!); done
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
for r in $(seq "$rounds"); do
  start=$(date +%s)
  python -m pytest -q -x tests/e2e/test_annotation_loop_browser.py > "$out/round_$r.log" 2>&1
  echo "round $r rc $? $(( $(date +%s) - start )) s" | tee -a "$out/summary.txt"
done
