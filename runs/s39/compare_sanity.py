"""Support = query per dataset and for session 35's small structures: candidates against a reference.
Usage: compare_sanity.py REFERENCE.json NAME=CANDIDATE.json [...]"""

import json
import sys
from collections import defaultdict

PROBE = ("left_choroid_plexus", "optic_chiasm", "corpus_callosum_mid_anterior", "third_ventricle", "left_pallidum",
         "esophagus")


def by_key(path: str) -> dict[tuple[str, str], float]:
    return {(row["dataset"], row["class_name"]): row["dice"] for row in json.load(open(path))}


reference = by_key(sys.argv[1])
candidates = {arg.split("=")[0]: by_key(arg.split("=")[1]) for arg in sys.argv[2:]}
datasets = defaultdict(list)
for key in reference:
    datasets[key[0]].append(key)
print("dataset | structures | reference | " + " | ".join(candidates))
for name, keys in datasets.items():
    cells = [f"{sum(c[k] for k in keys) / len(keys):+.3f}" for c in candidates.values()]
    ref = sum(reference[k] for k in keys) / len(keys)
    print(f"{name} | {len(keys)} | {ref:.3f} | " + " | ".join(f"{float(x) - ref:+.3f}" for x in cells))
for key in reference:
    if key[1] in PROBE:
        print(f"{key[0]}/{key[1]} | {reference[key]:.3f} | " + " | ".join(f"{c[key]:.3f}" for c in candidates.values()))
