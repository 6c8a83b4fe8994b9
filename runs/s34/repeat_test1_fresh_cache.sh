#!/bin/bash
# As repeat_test1.sh, each round with an empty Gradio file cache (GRADIO_TEMP_DIR), as on a fresh CI machine.
# Usage: bash runs/s34/repeat_test1_fresh_cache.sh R OUTDIR
rounds=${1:-20}; out=${2:-runs/s34/repeat_test1_fresh}
mkdir -p "$out"
for r in $(seq "$rounds"); do
  start=$(date +%s)
  cache=$(mktemp -d)
  GRADIO_TEMP_DIR="$cache" GRADIO_ANALYTICS_ENABLED=False python -m pytest -q -p no:cacheprovider \
    "tests/e2e/test_annotation_loop_browser.py::test_1_paint_and_erase_land_on_the_voxels_under_the_pointer" \
    > "$out/round_$r.log" 2>&1
  echo "round $r rc $? $(( $(date +%s) - start )) s" >> "$out/summary.txt"
  rm -rf "$cache"
done
