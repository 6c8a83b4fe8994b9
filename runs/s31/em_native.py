"""A thin 2D set at its images' own size through IrisSegmenter (as the app refines), fine refiner on / off and the
disc: em_native.py dev|test|drive_dev|drive_test [--size=N] [--support=CASE] [key=value RefineConfig overrides]
(--size: images and masks resized to N x N first, area / nearest; --support: another EM support section). dev: ISBI EM support em_00, queries
em_10..em_19 (training patients); test: support em_00, queries the split's test sections; drive_dev: DRIVE vessels,
support the first training image, queries the next 8 training images; drive_test: the same support, queries the
split's test images."""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from skimage.transform import resize

from iris_engine.data.msd import MSDDataset
from iris_engine.data.shared_paths import shared_data_dir
from iris_engine.data.splits import Split
from iris_engine.inference import IrisSegmenter, Support
from iris_engine.io.volume import Volume
from iris_engine.metrics import dice
from iris_engine.refinement import Click, RefineConfig, next_click

torch.set_num_threads(1)
SIZE = next((int(a.split("=")[1]) for a in sys.argv[2:] if a.startswith("--size=")), None)
OVERRIDES = {k: (v == "True") if isinstance(getattr(RefineConfig(), k), bool) else type(getattr(RefineConfig(), k))(v)
             for k, v in (a.split("=") for a in sys.argv[2:] if not a.startswith("--"))}
split = Split.load("assets/weights/split.json")
DRIVE = sys.argv[1].startswith("drive")
NAME, CLASS, MODALITY = ("drive_fundus", "vessel", "fundus") if DRIVE else ("isbi_em", "membrane", "EM")
dataset = MSDDataset(Path(shared_data_dir()) / NAME)


def section(case):
    image, labels, _ = dataset.load_case(case)
    if SIZE is not None:
        image = resize(image.astype(np.float32), (SIZE, SIZE), order=1, anti_aliasing=True, preserve_range=True)
        labels = resize(labels, (SIZE, SIZE), order=0, anti_aliasing=False, preserve_range=True).astype(labels.dtype)
    return Volume(image.astype(np.float32), np.eye(4), MODALITY), labels == dataset.foreground_labels[CLASS]


if DRIVE:
    support = section(split.train_cases[NAME][0])
    queries = split.train_cases[NAME][1:9] if sys.argv[1] == "drive_dev" else split.test_cases[NAME]
else:
    support = section(next((a.split("=")[1] for a in sys.argv[2:] if a.startswith("--support=")), "em_00"))
    queries = [f"em_{i:02d}" for i in range(10, 20)] if sys.argv[1] == "dev" else split.test_cases[NAME]
segmenter = IrisSegmenter.from_checkpoint("assets/weights/iris2d.pt")
fine = segmenter.fine_click_refiner
curves = {"fine": [], "grid": [], "disc": []}
for case in queries:
    query, truth = section(case)
    result = segmenter.segment(query, "one_shot", [Support(support[0], support[1].astype(np.uint8))], [CLASS])
    for name in curves:
        segmenter.fine_click_refiner = fine if name == "fine" else None
        config = RefineConfig(method="disc" if name == "disc" else "learned", **OVERRIDES)
        clicks, current, curve = [], result, [dice(result.masks[0], truth)]
        for _ in range(5):
            position, positive = next_click(current.masks[0], truth)
            clicks.append(Click(position, positive))
            current = segmenter.refine(query, result, clicks, config)
            curve.append(dice(current.masks[0], truth))
        curves[name].append(curve)
    print(case, {k: [round(v, 3) for v in c[-1]] for k, c in curves.items()}, flush=True)
print(json.dumps({k: np.mean(c, axis=0).round(4).tolist() for k, c in curves.items()}))
