"""Check on training patients (after rule 1): the slice stride on whole SegTHOR volumes through
IrisSegmenter.segment (the app's path), not only the class's slices +- 2 as in zstride_probe.py. One support slice
(the middle oesophagus slice of one training patient) -> the whole volume of the next; Dice over the volume and
wall time, stride 3 against every slice."""
import time
from dataclasses import replace

import nibabel as nib
import numpy as np
import torch

from iris_engine.inference import IrisSegmenter, Support
from iris_engine.io.readers import read_image

torch.set_num_threads(2)
ROOT = "../shared/data/segthor_ct"
PAIRS = [("04", "05"), ("05", "06"), ("06", "07"), ("07", "09"), ("09", "10"), ("10", "11"), ("11", "12"),
         ("12", "14")]
segmenter = IrisSegmenter.from_checkpoint("assets/weights/iris2d.pt")
rows = []
for source, target in PAIRS:
    labels = np.asarray(nib.load(f"{ROOT}/labelsTr/segthor_{source}.nii.gz").dataobj)
    z = int(np.median(np.nonzero((labels == 1).any((0, 1)))[0]))
    mask = np.zeros(labels.shape, np.uint8)
    mask[..., z] = labels[..., z] == 1
    support = Support(read_image(f"{ROOT}/imagesTr/segthor_{source}.nii.gz"), mask)
    query = read_image(f"{ROOT}/imagesTr/segthor_{target}.nii.gz")
    truth = np.asarray(nib.load(f"{ROOT}/labelsTr/segthor_{target}.nii.gz").dataobj) == 1
    row = {"pair": f"{source}->{target}"}
    for stride in (3, 1):
        segmenter.config = replace(segmenter.config, fine_volume_stride=stride)
        begin = time.perf_counter()
        result = segmenter.segment(query, "one_shot", [support], ["esophagus"])
        seconds = time.perf_counter() - begin
        m = result.masks[0]
        row[f"s{stride}"] = (round(float(2 * (m & truth).sum() / (m.sum() + truth.sum())), 4), round(seconds, 1),
                             result.input_scale, result.slice_stride)
    rows.append(row)
    print(row, flush=True)
for stride in (3, 1):
    print(f"stride {stride}: mean Dice {np.mean([r[f's{stride}'][0] for r in rows]):.4f}, "
          f"mean s {np.mean([r[f's{stride}'][1] for r in rows]):.1f}")
