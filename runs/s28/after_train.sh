#!/bin/bash
# Soup of the two bf16 warm starts, then the dev gate (one thread per process, two at a time).
set -e
cd /work/main
iris average-weights runs/s28/warm_e/final.pt runs/s28/warm_f/final.pt --out runs/s28/soup_ef.pt \
  --split assets/weights/split.json --version "$1" --threads 2 > runs/s28/average.log 2>&1
python runs/s24/dev_oneshot.py runs/s28/soup_ef.pt runs/s28/dev_soup.json > runs/s28/dev_soup.log 2>&1 &
python runs/s24/dev_oneshot.py runs/s28/warm_e/final.pt runs/s28/dev_e.json > runs/s28/dev_e.log 2>&1
wait
python runs/s24/dev_oneshot.py runs/s28/warm_f/final.pt runs/s28/dev_f.json > runs/s28/dev_f.log 2>&1
python - <<'PY'
import json
for n in ("soup", "e", "f"):
    rows = json.load(open(f"runs/s28/dev_{n}.json"))
    g = {}
    for r in rows:
        if r["rule"] is not None:
            g.setdefault(r["group"], []).append(r["rule"])
    print(n, {k: round(sum(v) / len(v), 4) for k, v in g.items()})
PY
