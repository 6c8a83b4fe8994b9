"""Where support = query loses: with and without the vote, predicted / true area.
Usage: sanity_probe.py CKPT DATASET..."""

import sys
from dataclasses import replace

import numpy as np
import torch

from iris_engine import strategies
from iris_engine.checkpoint import load_checkpoint
from iris_engine.correspondence import CorrespondenceConfig
from iris_engine.data.catalog import dataset_info
from iris_engine.data.msd import MSDDataset
from iris_engine.data.shared_paths import shared_data_dir
from iris_engine.data.slices import resize_images, resize_labels
from iris_engine.evaluation.sanity import SanityConfig, _back_to_original, _dataset_slices, _dice
from iris_engine.input_scale import choose_input_scale

torch.set_num_threads(1)
model = load_checkpoint(sys.argv[1]).model.eval()
config = SanityConfig()
root = shared_data_dir()
totals = {}
for name in sys.argv[2:]:
    ds = MSDDataset(root / name)
    ignore = set(dataset_info(name).ignore_labels)
    for class_name, value in sorted(ds.foreground_labels.items(), key=lambda kv: kv[1]):
        if class_name in ignore:
            continue
        for sample in _dataset_slices(ds, value, config.min_area, config.draws, 0):
            truth = sample.labels == value
            size = model.config.image_size
            small = torch.from_numpy(resize_labels(truth[None].astype(np.uint8), size) > 0)
            if not small.any():
                continue
            scale = choose_input_scale(small[:, None].float(), config.fine_scale_thickness)
            image = torch.from_numpy(resize_images(sample.image[None], size * scale))[:, None]
            mask = torch.from_numpy(resize_labels(truth[None].astype(np.uint8), size * scale) > 0)[:, None].float()
            row = {}
            votes = (("vote", CorrespondenceConfig()), ("novote", replace(CorrespondenceConfig(), weight=0.0)))
            for label, corr in votes:
                emb = strategies.encode_supports(model, image, mask, correspondence=corr, calibration=None)
                p = strategies.predict_probabilities(model, image, emb)[0, 0]
                pred = _back_to_original(p, truth.shape) >= 0.5
                row[label] = (_dice(pred, truth), pred.sum() / truth.sum())
            key = (name, class_name)
            totals.setdefault(key, []).append((scale, *row["vote"], *row["novote"]))
for key, rows in totals.items():
    a = np.array(rows)
    print(f"{key[0]:18s} {key[1]:34s} scale {a[:,0].mean():.1f} vote {a[:,1].mean():.3f} area {a[:,2].mean():.2f}"
          f"  novote {a[:,3].mean():.3f} area {a[:,4].mean():.2f}", flush=True)
allr = np.concatenate([np.array(r) for r in totals.values()])
print("mean over slices: vote", allr[:, 1].mean().round(3), "novote", allr[:, 3].mean().round(3))
