#!/bin/bash
# The full suite (.ci/run's pytest command) with N busy loops beside it, as a training run would load the machine.
# Usage: bash runs/s34/loaded_suite.sh N LOG
n=${1:-1}; log=${2:-runs/s34/suite_loaded.log}
pids=()
for _ in $(seq "$n"); do python -c "while True: pass" & pids+=($!); done
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
start=$(date +%s)
GRADIO_ANALYTICS_ENABLED=False python -m pytest -q > "$log" 2>&1
echo "rc $? $(( $(date +%s) - start )) s" >> "$log"
