"""Dev look (EM sections 10-19, training data): the first click on query Q, disc vs learned, around the click."""
import os
import numpy as np, torch
from PIL import Image
torch.set_num_threads(2)
from iris_engine import strategies
import iris_engine.refinement as R
from iris_engine.checkpoint import load_checkpoint, load_click_refiner
from iris_engine.data.episodes import iter_eval_pairs
from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import Split
from iris_engine.evaluation import refinement as ref
from iris_engine.evaluation.harness import evaluation_tasks
from iris_engine.input_scale import to_model_grid
model = load_checkpoint("assets/weights/iris2d.pt").model.eval()
refiner = load_click_refiner("assets/weights/click_refiner.pt").refiner
split = Split.load("runs/s21/dev_em_split.json")
bank = build_slice_bank(("isbi_em",), size=256)
ids = bank.patient_ids.copy().astype(object)
for i, case in enumerate(bank.case_ids):
    if str(case).startswith("em_") and 10 <= int(str(case)[3:]) < 20:
        ids[i] = "em_sections_10_19_dev"
bank.patient_ids = ids
config = ref.RefineEvalConfig(methods=("learned",), max_queries=10)
spec = [s for s in evaluation_tasks(bank, split) if s.dataset == "isbi_em"][0]
pairs = list(iter_eval_pairs(bank, split, spec.dataset, spec.class_name, 1, 0, support_from=spec.support_from))
emb, fine = ref.one_shot_embedding(model, pairs[0], config)
q = int(os.environ.get("Q", "1"))
stack, truth, _ = ref._queries(pairs, spec, config)[q]
start = np.moveaxis(strategies.predict_probabilities(model, stack, emb)[:, 0].numpy(), 0, -1)
image = np.moveaxis(stack[:, 0].numpy(), 0, -1).astype(np.float32)
learned = R.LearnedClicks(refiner, R.QueryFeatures(model, to_model_grid(stack, 128)))
pos, positive = R.next_click(start >= .5, truth)
clicks = np.zeros(truth.shape, np.uint8); clicks[pos] = R.POSITIVE if positive else R.NEGATIVE
cfg = R.RefineConfig()
out = {m: R.refine_on_grid(image, start, clicks, R.replace(cfg, method=m), 256, None, learned=learned) >= .5
       for m in ("disc", "learned", "local")}
y, x, _ = pos
print("click", pos, "positive" if positive else "negative", "thin", R._is_thin(start[:, :, 0], cfg))
d = lambda m: 2 * (m & truth).sum() / (m.sum() + truth.sum())
print("start", round(float(d(start >= .5)), 4), {k: round(float(d(v)), 4) for k, v in out.items()})
box = (slice(max(0, y - 32), y + 32), slice(max(0, x - 32), x + 32))
for k, v in out.items():
    changed = v[..., 0] != (start[..., 0] >= .5)
    print(k, "changed", int(changed.sum()), "gained TP", int((changed & v[..., 0] & truth[..., 0]).sum()),
          "gained FP", int((changed & v[..., 0] & ~truth[..., 0]).sum()),
          "removed TP", int((changed & ~v[..., 0] & truth[..., 0]).sum()),
          "removed FP", int((changed & ~v[..., 0] & ~truth[..., 0]).sum()))
def tile(a): return np.kron(a[box].astype(np.float32), np.ones((4, 4)))
img = image[..., 0]; img = (img - img.min()) / (np.ptp(img) + 1e-9)
rgb = lambda m: np.stack([tile(img)] * 3, -1) * 0.6 + np.stack([tile(m & ~truth[..., 0]), tile(m & truth[..., 0]), tile(~m & truth[..., 0])], -1) * 0.4
rows = [np.stack([tile(img)] * 3, -1), rgb(start[..., 0] >= .5)] + [rgb(v[..., 0]) for v in out.values()]
Image.fromarray((np.concatenate(rows, 1) * 255).clip(0, 255).astype(np.uint8)).save(f"/tmp/s27/em_q{q}.png")
