#!/bin/bash
# Session 39: session 38's four measures of one checkpoint, written to runs/s39. Usage: measure.sh CKPT NAME
MEASURE_DIR=runs/s39 exec runs/s38/measure.sh "$@"
