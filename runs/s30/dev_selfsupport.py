"""Dev one-shot (training patients, dev_split, support draws 0 1, 8 queries, 256 px scoring) with the query's own
one-shot mask re-read as a support ("self-support"), blended with weights W: dev_selfsupport.py OUT.json."""
import json
import sys

import numpy as np
import torch

from iris_engine import strategies
from iris_engine.checkpoint import load_checkpoint
from iris_engine.data.catalog import default_datasets
from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import Split, dev_split
from iris_engine.errors import IrisInputError
from iris_engine.evaluation.harness import EvalConfig, Evaluator, case_dice, evaluation_tasks
from iris_engine.memory_bank import MemoryBank

WEIGHTS = (0.0, 0.2, 0.3, 0.5, 1.0)
torch.set_num_threads(1)
model = load_checkpoint("assets/weights/iris2d.pt").model.eval()
split = dev_split(Split.load("assets/weights/split.json"))
names = tuple(d for d in default_datasets() if split.test_cases.get(d))
bank = build_slice_bank(names, size=256)
ev = Evaluator(model, MemoryBank(), bank, split, EvalConfig(seeds=(0, 1), max_queries=8))
rows = []
for spec in evaluation_tasks(bank, split):
    scores = {w: [] for w in WEIGHTS}
    for seed in (0, 1):
        try:
            pairs = ev.pairs(spec, 1, seed)
        except IrisInputError:
            continue
        if not pairs:
            continue
        queries = torch.stack([p.query_image for p in pairs])
        images, masks, inputs = ev.inputs(pairs[0].support_images, pairs[0].support_masks, queries)
        embedding = strategies.encode_supports(model, images, masks, correspondence=ev.inference.correspondence,
                                               calibration=ev.inference.calibration)
        first = strategies.segment_with_embedding(model, inputs, embedding, ev.inference).probabilities.float()
        own = first >= 0.5
        with torch.no_grad():
            tokens = model.encode_task(inputs, own.float())  # each query's own mask as its support
            features = model.encode_query(inputs)
            second = torch.sigmoid(model.decode(features, tokens, model.decoder.pixel_features(features[1:])).float())
        empty = own.flatten(1).sum(1) < 4
        second[empty] = first[empty]
        for w in WEIGHTS:
            blend = (1 - w) * first + w * second
            scores[w].append(case_dice(ev.score_grid(blend[:, 0]) >= 0.5, pairs))
    if scores[0.0]:
        row = {"dataset": spec.dataset, "class": spec.class_name, "group": spec.group,
               **{str(w): float(np.mean(v)) for w, v in scores.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
json.dump(rows, open(sys.argv[1], "w"), indent=1)
for group in sorted({r["group"] for r in rows}):
    sel = [r for r in rows if r["group"] == group]
    print(group, len(sel), {w: round(float(np.mean([r[str(w)] for r in sel])), 4) for w in WEIGHTS})
