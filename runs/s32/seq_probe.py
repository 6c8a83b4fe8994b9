"""Dev click protocol with SEQUENTIAL refinement on results read at the input size (each click refines the
previous output with all clicks so far (--new-local: its local edit reads the newest click only); thin results read at twice the input size keep restarting from the start
with the fine refiner): seq_probe.py OUT [--em] [--volumes] [--new-local] [--ensemble=PATH] [--two-inputs=PATH] [--refiner=PATH] [key=value ...]."""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dev_common import dev_split_and_bank
from iris_engine.evaluation import refinement as ev
from iris_engine import refinement as rf
from iris_engine.refinement import NEGATIVE, POSITIVE, RefineConfig, next_click, refine_on_grid

NEWEST: dict = {}  # --new-local: the local edit of a sequential step reads only the newest click
_local_edit = rf.local_edit


def newest_local_edit(image, probability, clicks, config, sampling=(1.0, 1.0, 1.0)):
    if NEWEST.get("on") and NEWEST.get("clicks") is not None and clicks.shape[:2] == NEWEST["clicks"].shape[:2]:
        full, newest, depth = NEWEST["all"], NEWEST["clicks"], clicks.shape[2]
        for offset in range(full.shape[2] - depth + 1):  # the window of a volume's slab this call edits
            if np.array_equal(full[:, :, offset: offset + depth], clicks):
                clicks = newest[:, :, offset: offset + depth]
                break
    return _local_edit(image, probability, clicks, config, sampling)


rf.local_edit = newest_local_edit

FINE = Path("assets/weights/click_refiner_fine.pt")


def simulate(image, truth, start, config, tuner, max_clicks, target, learned=None, view=None):
    sequential = learned is not None and learned.features is learned.grid_features  # not the fine refiner
    clicks = np.zeros(truth.shape, dtype=np.uint8)
    probability = start
    scores = [ev.dice(start >= config.threshold, truth)]
    seconds = []
    for n in range(max_clicks):
        if n >= 5 and max(scores) >= target:
            break
        placed = next_click(probability >= config.threshold, truth)
        if placed is None:
            scores.append(scores[-1])
            continue
        position, positive = placed
        clicks[position] = POSITIVE if positive else NEGATIVE
        newest = np.zeros_like(clicks)
        newest[position] = clicks[position]
        full = clicks
        if view is not None and max(clicks.shape[:2]) > view:
            newest = np.moveaxis(rf.clicks_to_grid(newest, view), 0, 2)
            full = np.moveaxis(rf.clicks_to_grid(clicks, view), 0, 2)
        NEWEST.update(on=sequential and "--new-local" in sys.argv, clicks=newest, all=full)
        begin = time.process_time()
        if sequential and TWO:  # --two-inputs=PATH: the sequential refiner that also reads the one-shot start
            TWO["start"] = rf._shrink(start, view) if view is not None and max(start.shape[:2]) > view else start
            probability = refine_on_grid(image, probability, clicks, config, view, tuner,
                                         learned=TwoInputClicks(TWO["refiner"], learned.features))
        elif sequential and ENSEMBLE:  # --ensemble=PATH: the restart protocol averaged with PATH's sequential one
            NEWEST["on"] = False
            restart = refine_on_grid(image, start, clicks, config, view, tuner, learned=learned)
            NEWEST["on"] = True
            follow = rf.LearnedClicks(ENSEMBLE["refiner"], learned.features)
            chained = refine_on_grid(image, probability, clicks, config, view, tuner, learned=follow)
            probability = (restart + chained) / 2
        else:
            probability = refine_on_grid(image, probability if sequential else start, clicks, config, view, tuner,
                                         learned=learned)
        seconds.append(time.process_time() - begin)
        scores.append(ev.dice(probability >= config.threshold, truth))
    return scores, float(np.mean(seconds)) if seconds else 0.0


class TwoInputClicks(rf.LearnedClicks):
    """LearnedClicks for train_two_inputs.TwoInputRefiner: the one-shot start (TWO["start"]) as two more inputs."""

    def refine(self, probability, clicks, slices):
        from train_two_inputs import inputs_with_start

        rows = list(slices)
        queries = self.features.queries
        size = queries.shape[-1]
        previous = rf._to_grid(probability, size).clamp(0, 1)
        start = rf._to_grid(TWO["start"][:, :, rows], size).clamp(0, 1)
        with torch.no_grad():
            inputs = inputs_with_start(self.refiner, queries[rows].float(), previous, start,
                                       self.features.pixels(rows).float().cpu(), rf.clicks_to_grid(clicks, size))
            refined = torch.sigmoid(self.refiner(inputs))
        change = rf._from_grid(refined - previous, probability.shape[:2])
        return np.clip(probability + change, 0.0, 1.0)


ev.simulate = simulate
ENSEMBLE: dict = {}
TWO: dict = {}
for a in sys.argv[2:]:
    if a.startswith("--two-inputs="):
        from train_two_inputs import TwoInputRefiner

        from iris_engine.model.click_refiner import ClickRefiner, ClickRefinerConfig
        saved = torch.load(a.split("=", 1)[1], map_location="cpu", weights_only=False)
        two = TwoInputRefiner(ClickRefiner(ClickRefinerConfig.from_dict(saved["config"])))
        two.load_state_dict(saved["state"])
        TWO["refiner"] = two.eval()
for a in sys.argv[2:]:
    if a.startswith("--ensemble="):
        from iris_engine.checkpoint import load_click_refiner
        ENSEMBLE["refiner"] = load_click_refiner(Path(a.split("=", 1)[1])).refiner.eval()
out, args = Path(sys.argv[1]), sys.argv[2:]
em = "--em" in args
refiner = next((Path(a.split("=", 1)[1]) for a in args if a.startswith("--refiner=")), None)
overrides = {k: type(getattr(RefineConfig(), k))(v) for k, v in (a.split("=") for a in args
                                                                  if "=" in a and not a.startswith("--"))}
torch.set_num_threads(1)
split, bank = dev_split_and_bank(em)
config = ev.RefineEvalConfig(methods=("learned",), max_queries=10 if em else int(os.environ.get("DEV_QUERIES", 6)),
                             seed=int(os.environ.get("DEV_SEED", 0)), volumes="--volumes" in args)
if "--volumes" in args:  # as runs/s30/dev_vol.py: 2 volumes per structure, seed 0
    real_queries = ev._queries

    def two_volumes(pairs, spec, config):
        stacks = real_queries(pairs, spec, config)
        if len(stacks) <= 2:
            return stacks
        rng = np.random.default_rng(0)
        return [stacks[i] for i in sorted(rng.choice(len(stacks), 2, replace=False))]

    ev._queries = two_volumes
payload = ev.run(Path("assets/weights/iris2d.pt"), split, config, RefineConfig(**overrides), log=False, bank=bank,
                 datasets=["isbi_em"] if em else None, click_refiner=refiner, fine_click_refiner=FINE)
ev.write(payload, out)
print(json.dumps({"overrides": overrides, "refiner": str(refiner), "mean": ev.summary(payload).get("mean over datasets")}))
