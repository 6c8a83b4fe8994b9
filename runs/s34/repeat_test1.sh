#!/bin/bash
# The annotation-loop browser test 1 (paint, segment, correct, switch cases, paint again) R times in a row.
# Usage: bash runs/s34/repeat_test1.sh R OUTDIR
rounds=${1:-20}; out=${2:-runs/s34/repeat_test1}
mkdir -p "$out"
for r in $(seq "$rounds"); do
  start=$(date +%s)
  GRADIO_ANALYTICS_ENABLED=False python -m pytest -q -p no:cacheprovider \
    "tests/e2e/test_annotation_loop_browser.py::test_1_paint_and_erase_land_on_the_voxels_under_the_pointer" \
    > "$out/round_$r.log" 2>&1
  echo "round $r rc $? $(( $(date +%s) - start )) s" >> "$out/summary.txt"
done
