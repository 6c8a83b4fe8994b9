"""Dev: what empties the mask at a second negative click (polyp dev, training patients)."""
import numpy as np, torch
torch.set_num_threads(2)
from iris_engine import strategies
import iris_engine.refinement as R
from iris_engine.checkpoint import load_checkpoint, load_click_refiner
from iris_engine.data.episodes import iter_eval_pairs
from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import Split, dev_split
from iris_engine.evaluation import refinement as ref
from iris_engine.evaluation.harness import evaluation_tasks
from iris_engine.input_scale import to_model_grid, to_score_grid
model = load_checkpoint("assets/weights/iris2d.pt").model.eval()
refiner = load_click_refiner("assets/weights/click_refiner.pt").refiner
split = dev_split(Split.load("assets/weights/split.json"))
bank = build_slice_bank(("polypgen_endoscopy",), size=256)
config = ref.RefineEvalConfig(methods=("learned",))
cfg = R.RefineConfig(method="learned")
spec = [s for s in evaluation_tasks(bank, split) if s.class_name == "polyp"][0]
pairs = list(iter_eval_pairs(bank, split, spec.dataset, spec.class_name, 1, 0, support_from=spec.support_from))
emb, fine = ref.one_shot_embedding(model, pairs[0], config)
stack, truth, _ = ref._queries(pairs, spec, config)[int(__import__("os").environ.get("Q", "1"))]
small = to_model_grid(stack, 128)
p = strategies.predict_probabilities(model, small, emb)[:, 0]
start = np.moveaxis(to_score_grid(p, (256, 256)).numpy(), 0, -1)
image = np.moveaxis(stack[:, 0].numpy(), 0, -1).astype(np.float32)
learned = R.LearnedClicks(refiner, R.QueryFeatures(model, small))
clicks = np.zeros(truth.shape, np.uint8); prob = start
for n in range(5):
    pos, positive = R.next_click(prob >= .5, truth)
    clicks[pos] = R.POSITIVE if positive else R.NEGATIVE
    view_clicks = np.moveaxis(R.clicks_to_grid(clicks, 128), 0, 2)
    s128 = R._shrink(start, 128)
    ref_out = learned.refine(s128, view_clicks, [0])
    local = R.local_edit(R._shrink(image, 128), s128.copy(), view_clicks, cfg)
    prob = R.refine_on_grid(image, start, clicks, cfg, 128, None, learned=learned)
    t128 = R._shrink(truth.astype(np.float32), 128) >= .5
    print(n, "+" if positive else "-", pos, "start", int((s128>=.5).sum()), "refiner", int((ref_out>=.5).sum()),
          "refiner&truth", int(((ref_out>=.5)&t128).sum()), "local", int((local>=.5).sum()), "local&truth", int(((local>=.5)&t128).sum()),
          "final", int((prob>=.5).sum()), "truth", int(t128.sum()))
