"""`iris evaluate-refinement`: the standard click protocol for interactive refinement, per dataset.

Start from the one-shot result on a held-out query slice (support: the middle class slice of another
patient, as in `iris evaluate`); each next click goes automatically to the centre (maximum of the
distance transform) of the largest error region: positive in a missed region, negative in a false
positive. Every method restarts from the one-shot result with all clicks so far. Reported: mean Dice
after 1, 3 and 5 clicks and the number of clicks to reach Dice 0.85 (cap 10; 0 when the one-shot result
already reaches it), per dataset/class, for each refinement method and the fixed-radius disc baseline.
Slices are a fixed-seed random subsample of each task's query slices (3D sets: axial slices of the volumes).
With `--volumes` the 3D sets are scored as volumes instead: each held-out volume's slices around the class's
range form one query, clicks go to the centre of the largest 3D error region, Dice is taken over the stack,
and a click also edits its neighbour slices as in the app (`RefineConfig.neighbour_slices`).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iris_engine import strategies
from iris_engine.checkpoint import (
    CLICK_REFINER_FILE,
    FINE_CLICK_REFINER_FILE,
    SEQUENTIAL_CLICK_REFINER_FILE,
    load_checkpoint,
    load_click_refiner,
)
from iris_engine.config import InferenceConfig
from iris_engine.data.catalog import default_datasets
from iris_engine.data.episodes import EvalPair, iter_eval_pairs
from iris_engine.data.slices import SliceBank, build_slice_bank
from iris_engine.data.splits import Split, dev_split
from iris_engine.embedding import TaskEmbedding
from iris_engine.errors import IrisInputError
from iris_engine.evaluation.harness import TaskSpec, evaluation_tasks
from iris_engine.input_scale import FINE_SCALE, support_inputs, to_model_grid, to_score_grid
from iris_engine.io.atomic import atomic_write
from iris_engine.metrics import BOOTSTRAP_RESAMPLES, bootstrap_group_means, interval, json_safe
from iris_engine.model.click_refiner import ClickRefiner
from iris_engine.model.iris import IrisModel
from iris_engine.refinement import (
    NEGATIVE,
    POSITIVE,
    ClickTuner,
    LearnedClicks,
    QueryFeatures,
    RefineConfig,
    learned_clicks,
    next_click,
    refine_on_grid,
    refine_steps,
)

REPORT_AT = (1, 3, 5)
FEW_QUERIES = 5  # below this many queries per class a bootstrap interval is too narrow to trust


@dataclass(frozen=True)
class RefineEvalConfig:
    """Protocol and size of the run."""

    methods: tuple[str, ...] = ("disc", "local", "learned", "tuning", "combined")
    max_queries: int = 6
    max_clicks: int = 10
    target: float = 0.85
    seed: int = 0
    threshold: float = 0.5
    volumes: bool = False  # 3D sets only, each held-out volume one query (the slices around the class's range)
    margin: int = 2  # bank slices kept beyond the class's range on either side of a volume
    # slices clicked and scored on a grid this multiple of the model's input, as `iris evaluate` scores them; at 2
    # the one-shot start of a thin support is segmented at twice the input size, as the engine does (1: the
    # protocol of sessions 11-19, everything on the model grid)
    score_scale: int = FINE_SCALE
    fine_scale_thickness: float = InferenceConfig.fine_scale_thickness
    # supports per class, each from one patient, drawn with seeds seed, seed + 1, ...; every query is refined from
    # each one's start (the one-click margin on ISBI EM moved by about +-0.03 with the support, session 31)
    support_draws: int = 1
    baseline: str = "disc"  # each other method's paired difference to it, with a bootstrap interval
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES

    def __post_init__(self) -> None:
        if self.support_draws < 1:
            raise IrisInputError(f"support draws must be at least 1, not {self.support_draws}")


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    total = float(prediction.sum() + truth.sum())
    return 2.0 * float((prediction & truth).sum()) / total if total else 1.0


def simulate(image: np.ndarray, truth: np.ndarray, start: np.ndarray, config: RefineConfig,
             tuner: ClickTuner | None, max_clicks: int, target: float, learned: LearnedClicks | None = None,
             view: int | None = None) -> tuple[list[float], float]:
    """Dice after 0, 1, ... automatic clicks on (H, W, Z) arrays (each call restarts from `start` with all clicks,
    refined on the in-plane `view` grid as the engine does, `refine_on_grid`; method "learned" with a sequential
    refiner refines the previous output instead, each click one step) and seconds per click.

    Stops once at least max(REPORT_AT) clicks are placed and the target was reached (nothing later is reported).
    """
    clicks = np.zeros(truth.shape, dtype=np.uint8)
    steps: list[np.ndarray] = []  # each click's own map, for a sequential refiner
    probability = start
    scores = [dice(start >= config.threshold, truth)]
    seconds = []
    for n in range(max_clicks):
        if n >= max(REPORT_AT) and max(scores) >= target:
            break
        placed = next_click(probability >= config.threshold, truth)
        if placed is None:
            scores.append(scores[-1])
            continue
        position, positive = placed
        clicks[position] = POSITIVE if positive else NEGATIVE
        begin = time.process_time()
        if config.method == "learned" and learned is not None and learned.sequential:
            steps.append(np.zeros_like(clicks))
            steps[-1][position] = clicks[position]
            probability = refine_steps(image, start, steps, config, view, learned, tuner, done=len(steps) - 1,
                                       previous=probability)[-1]
        else:
            probability = refine_on_grid(image, start, clicks, config, view, tuner, learned=learned)
        seconds.append(time.process_time() - begin)
        scores.append(dice(probability >= config.threshold, truth))
    return scores, float(np.mean(seconds)) if seconds else 0.0


def clicks_to_target(scores: list[float], target: float, cap: int) -> int:
    """First click count whose Dice reaches the target (0: already there); `cap` when never."""
    return next((n for n, s in enumerate(scores) if s >= target), cap)


def _sample(pairs: list[EvalPair], spec: TaskSpec, config: RefineEvalConfig) -> list[EvalPair]:
    positive = [p for p in pairs if p.query_mask.sum() > 0]
    if len(positive) <= config.max_queries:
        return positive
    rng = np.random.default_rng([config.seed, zlib.crc32(f"{spec.dataset}/{spec.class_name}".encode())])
    return [positive[i] for i in sorted(rng.choice(len(positive), config.max_queries, replace=False))]


Query = tuple[torch.Tensor, np.ndarray, str]


def _queries(pairs: list[EvalPair], spec: TaskSpec, config: RefineEvalConfig) -> list[Query]:
    """Query stacks: model-space slices (Z, 1, S, S), truth (S, S, Z) and patient; sampled single slices, or with
    `volumes` each held-out volume's bank slices from `margin` below to `margin` above the class's range."""
    if not config.volumes:
        return [(p.query_image[None], p.query_mask[0].numpy()[..., None] >= 0.5, p.query_patient)
                for p in _sample(pairs, spec, config)]
    by_case: dict[str, list[EvalPair]] = {}
    for pair in pairs:  # in slice order within each case
        by_case.setdefault(pair.query_case, []).append(pair)
    stacks = []
    for _, rows in sorted(by_case.items()):
        shown = [i for i, p in enumerate(rows) if p.query_mask.sum() > 0]
        if shown:
            part = rows[max(0, shown[0] - config.margin): shown[-1] + config.margin + 1]
            stacks.append((torch.stack([p.query_image for p in part]),
                           np.stack([p.query_mask[0].numpy() >= 0.5 for p in part], axis=-1), part[0].query_patient))
    return stacks


def one_shot_embedding(model: IrisModel, pair: EvalPair, config: RefineEvalConfig) -> tuple[TaskEmbedding, bool]:
    """The support's task embedding as the engine computes it, and whether it is read at twice the input size
    (a thin support on a slice bank that fine, `iris_engine.input_scale`)."""
    images, masks, scale = support_inputs(pair.support_images, pair.support_masks, model.config.image_size,
                                          config.fine_scale_thickness)
    return strategies.encode_supports(model, images, masks), scale == FINE_SCALE


def _refine_queries(model: IrisModel, queries: list[Query], embedding: TaskEmbedding, fine: bool,
                    config: RefineEvalConfig, refine: RefineConfig, refiner: ClickRefiner | None,
                    fine_refiner: ClickRefiner | None, sequential_refiner: ClickRefiner | None = None
                    ) -> tuple[dict[str, list[list[float]]], dict[str, list[float]]]:
    """Each method's simulated click curve on each query from the one-shot start of `embedding`, and its seconds
    per click."""
    curves: dict[str, list[list[float]]] = {m: [] for m in config.methods}
    seconds: dict[str, list[float]] = {m: [] for m in config.methods}
    size = model.config.image_size
    scale = FINE_SCALE if fine else 1
    for stack, truth, _ in queries:
        small = to_model_grid(stack, size)
        probabilities = strategies.predict_probabilities(model, stack if fine else small, embedding)[:, 0]
        start = np.moveaxis(to_score_grid(probabilities, tuple(stack.shape[-2:])).numpy(), 0, -1)
        image = np.moveaxis(stack[:, 0].numpy(), 0, -1).astype(np.float32)
        features = QueryFeatures(model, small)
        learned, query_refine = learned_clicks(
            refiner, fine_refiner, features,
            lambda stack=stack: QueryFeatures(model, stack), scale, refine, sequential_refiner, stack.shape[0])
        for method in config.methods:
            method_config = replace(query_refine, method=method, threshold=config.threshold)
            tuner = ClickTuner(features, embedding.tokens, method_config)
            scores, per_click = simulate(image, truth, start, method_config, tuner, config.max_clicks, config.target,
                                         learned, size * scale)
            curves[method].append(scores)
            seconds[method].append(per_click)
    return curves, seconds


def evaluate_task(model: IrisModel, bank: SliceBank, split: Split, spec: TaskSpec, config: RefineEvalConfig,
                  refine: RefineConfig, refiner: ClickRefiner | None = None,
                  fine_refiner: ClickRefiner | None = None,
                  sequential_refiner: ClickRefiner | None = None) -> dict[str, Any]:
    """Per method: Dice after each click and clicks to the target, averaged over the task's queries (each query
    once per support draw: `support_draws` supports, one patient each, drawn with seeds seed, seed + 1, ...; a draw
    that repeats an earlier one's support, as where a dataset has a single support patient, is skipped)."""
    curves: dict[str, list[list[float]]] = {m: [] for m in config.methods}
    seconds: dict[str, list[float]] = {m: [] for m in config.methods}
    draws: list[dict[str, Any]] = []
    for draw in range(config.support_draws):
        pairs = list(iter_eval_pairs(bank, split, spec.dataset, spec.class_name, 1, config.seed + draw,
                                     support_from=spec.support_from))
        if any(d["support_patients"] == pairs[0].support_patients for d in draws):
            continue
        queries = _queries(pairs, spec, config)
        if not queries:
            raise IrisInputError(f"{spec.dataset}/{spec.class_name}: no query slice shows the class")
        embedding, fine = one_shot_embedding(model, pairs[0], config)
        draw_curves, draw_seconds = _refine_queries(model, queries, embedding, fine, config, refine, refiner,
                                                    fine_refiner, sequential_refiner)
        for method in config.methods:
            curves[method] += draw_curves[method]
            seconds[method] += draw_seconds[method]
        draws.append({"support_patients": pairs[0].support_patients, "query_patients": sorted({q[2] for q in queries}),
                      "queries": len(queries), "slices": int(sum(q[1].shape[2] for q in queries)),
                      "input_scale": FINE_SCALE if fine else 1})
    return {
        **asdict(spec), "queries": sum(d["queries"] for d in draws),
        "query_patients": sorted({p for d in draws for p in d["query_patients"]}),
        "slices": sum(d["slices"] for d in draws), "input_scale": draws[0]["input_scale"],
        "support_patients": sorted({p for d in draws for p in d["support_patients"]}), "draws": draws,
        "dice_curve": {m: np.mean([s[: max(REPORT_AT) + 1] for s in c], axis=0).round(4).tolist()
                       for m, c in curves.items()},
        "query_curves": {m: np.asarray([s[: max(REPORT_AT) + 1] for s in c]).round(4).tolist()
                         for m, c in curves.items()},
        "clicks_to_target": {m: float(np.mean([clicks_to_target(s, config.target, config.max_clicks) for s in c]))
                             for m, c in curves.items()},
        "seconds_per_click": {m: float(np.mean(s)) for m, s in seconds.items()},
    }


_WORK: dict[str, Any] = {}


def _task(spec: TaskSpec) -> tuple[dict[str, Any] | None, str | None, float]:
    """One task in this process (or a forked worker sharing `_WORK`): its row or the reason it was skipped."""
    torch.set_num_threads(1)
    begin = time.process_time()
    try:
        row = evaluate_task(_WORK["model"], _WORK["bank"], _WORK["split"], spec, _WORK["config"], _WORK["refine"],
                            _WORK["refiner"], _WORK["fine_refiner"], _WORK["sequential_refiner"])
        return row, None, time.process_time() - begin
    except IrisInputError as error:
        return None, str(error), time.process_time() - begin


def _refiner_for(path: Path, model: IrisModel) -> ClickRefiner:
    """The click refiner in `path`, checked to be trained for `model`."""
    loaded = load_click_refiner(path)
    if loaded.iris_model_version != model.version:
        raise IrisInputError(f"{path.name} was trained for model {loaded.iris_model_version}, not {model.version}")
    return loaded.refiner


def run(checkpoint: Path, split: Split, config: RefineEvalConfig, refine: RefineConfig,
        bank: SliceBank | None = None, datasets: list[str] | None = None, data_root: Path | None = None,
        log: bool = True, workers: int = 1, click_refiner: Path | None = None,
        fine_click_refiner: Path | None = None, use_fine_refiner: bool = True,
        sequential_click_refiner: Path | None = None) -> dict[str, Any]:
    """Evaluate every (dataset, class) with test patients; returns the JSON-ready payload. Method "learned" reads
    `click_refiner` (default: the file beside the checkpoint); on results read at twice the input size
    `fine_click_refiner` (default: the fine file beside the checkpoint, where there is one; none with
    `use_fine_refiner` False); on single slices read at the input size, with `refine.sequential`,
    `sequential_click_refiner` (default: the sequential file beside the checkpoint, where there is one)."""
    loaded = load_checkpoint(checkpoint)
    model = loaded.model.eval()
    refiner = fine_refiner = sequential_refiner = None
    click_refiner = click_refiner or checkpoint.with_name(CLICK_REFINER_FILE)
    sequential_click_refiner = sequential_click_refiner or checkpoint.with_name(SEQUENTIAL_CLICK_REFINER_FILE)
    if not refine.sequential or not sequential_click_refiner.is_file():
        sequential_click_refiner = None
    fine_click_refiner = fine_click_refiner or checkpoint.with_name(FINE_CLICK_REFINER_FILE)
    fine_click_refiner = fine_click_refiner if use_fine_refiner and fine_click_refiner.is_file() else None
    if "learned" in config.methods:
        refiner = _refiner_for(click_refiner, model)
        fine_refiner = None if fine_click_refiner is None else _refiner_for(fine_click_refiner, model)
        if sequential_click_refiner is not None:
            sequential_refiner = _refiner_for(sequential_click_refiner, model)
            if not sequential_refiner.config.sequential:
                raise IrisInputError(f"{sequential_click_refiner.name} holds a restarting refiner, not a "
                                     "sequential one")
    if bank is None:
        names = tuple(d for d in default_datasets() if split.test_cases.get(d) and (datasets is None or d in datasets))
        bank = build_slice_bank(names, root=data_root, size=config.score_scale * model.config.image_size)
    specs = [s for s in evaluation_tasks(bank, split)
             if (datasets is None or s.dataset in datasets) and (s.is_3d or not config.volumes)]
    begin, cpu = time.perf_counter(), time.process_time()
    _WORK.update(model=model, bank=bank, split=split, config=config, refine=refine, refiner=refiner,
                 fine_refiner=fine_refiner, sequential_refiner=sequential_refiner)
    tasks, notes, worker_cpu = [], [], 0.0
    if workers > 1:
        pool = multiprocessing.get_context("fork").Pool(workers)
        outcomes = pool.imap(_task, specs)
    else:
        pool, outcomes = None, map(_task, specs)
    try:
        for index, (spec, (row, note, seconds)) in enumerate(zip(specs, outcomes, strict=True)):
            worker_cpu += seconds if pool is not None else 0.0
            if row is None:
                notes.append(str(note))
                continue
            tasks.append(row)
            if log:
                print(f"[{index + 1}/{len(specs)}] {spec.dataset}/{spec.class_name}: Dice after 5 clicks "
                      + ", ".join(f"{m} {row['dice_curve'][m][-1]:.3f}" for m in config.methods), flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        _WORK.clear()
    return {
        "checkpoint": str(checkpoint), "model_version": model.version,
        "click_refiner": str(click_refiner) if refiner else None,
        "fine_click_refiner": str(fine_click_refiner) if fine_refiner else None,
        "sequential_click_refiner": str(sequential_click_refiner) if sequential_refiner else None,
        "split_seed": split.seed,
        "split_fingerprint": split.fingerprint(), "protocol": asdict(config),
        "refine": {k: v for k, v in asdict(refine).items() if k != "method"},
        "seconds": round(time.perf_counter() - begin, 1), "workers": workers,
        "cpu_seconds": round(time.process_time() - cpu + worker_cpu, 1), "tasks": tasks, "notes": notes,
    }


def summary(payload: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Per dataset (mean over its classes) and overall (mean over datasets): Dice@0/1/3/5 and clicks to target."""
    methods = payload["protocol"]["methods"]
    per: dict[str, dict[str, dict[str, list[float]]]] = {}
    for task in payload["tasks"]:
        for m in methods:
            curve = task["dice_curve"][m]
            entry = per.setdefault(task["dataset"], {}).setdefault(m, {})
            for n in (0, *REPORT_AT):
                entry.setdefault(f"dice@{n}", []).append(curve[min(n, len(curve) - 1)])
            entry.setdefault("clicks", []).append(task["clicks_to_target"][m])
            entry.setdefault("seconds", []).append(task["seconds_per_click"][m])
    table = {d: {m: {k: float(np.mean(v)) for k, v in stats.items()} for m, stats in ms.items()}
             for d, ms in per.items()}
    if table:
        table["mean over datasets"] = {m: {k: float(np.mean([table[d][m][k] for d in per])) for k in
                                           next(iter(table.values()))[m]} for m in methods}
    return table


def paired_differences(payload: dict[str, Any]) -> dict[str, dict[str, dict[int, tuple[float, float, float]]]]:
    """Per dataset and over the datasets, each method minus the protocol's baseline after each reported click
    count: the mean paired difference (per query, averaged over a dataset's classes as `summary`) and its 95 %
    bootstrap interval (the queries of each class resampled with replacement)."""
    cfg = payload["protocol"]
    baseline = cfg.get("baseline", "disc")
    methods = [m for m in cfg["methods"] if m != baseline]
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for task in payload["tasks"]:
        if "query_curves" in task:
            by_dataset.setdefault(task["dataset"], []).append(task)
    if baseline not in cfg["methods"] or not methods or not by_dataset:
        return {}
    rng = np.random.default_rng(cfg.get("seed", 0))
    resamples = int(cfg.get("bootstrap_resamples", BOOTSTRAP_RESAMPLES))
    keys = [(m, n) for m in methods for n in REPORT_AT]
    means: dict[str, dict[tuple[str, int], float]] = {d: {} for d in by_dataset}
    boots: dict[str, dict[tuple[str, int], np.ndarray]] = {d: {} for d in by_dataset}
    for dataset, tasks in by_dataset.items():
        for method, n in keys:
            gaps = [np.asarray(t["query_curves"][method]) - np.asarray(t["query_curves"][baseline]) for t in tasks]
            at = [g[:, min(n, g.shape[1] - 1)] for g in gaps]  # a run capped under 5 clicks keeps its last
            means[dataset][method, n] = float(np.mean([a.mean() for a in at]))
            boots[dataset][method, n] = bootstrap_group_means(at, rng, resamples)
    if len(by_dataset) > 1:
        means["mean over datasets"] = {k: float(np.mean([means[d][k] for d in by_dataset])) for k in keys}
        boots["mean over datasets"] = {k: np.mean([boots[d][k] for d in by_dataset], axis=0) for k in keys}
    return {d: {m: {n: (means[d][m, n], *interval(boots[d][m, n])) for n in REPORT_AT} for m in methods}
            for d in means}


def _queries_line(cfg: dict[str, Any]) -> str:
    draws = int(cfg.get("support_draws", 1))
    support = ("support: the middle class slice of another patient (training patients where the dataset has "
               "them); the start is the one-shot result.")
    if draws > 1:
        support = (f"supports: the middle class slice of each of {draws} other patients drawn with seeds "
                   f"{cfg['seed']}-{cfg['seed'] + draws - 1} (training patients where the dataset has them), one "
                   "at a time; each query is refined from each one's one-shot start (a class whose draws repeat a "
                   "support, as where the dataset has one support patient, keeps the distinct ones; the per-class "
                   "table counts a slice once per draw).")
    if cfg.get("volumes"):
        return (f"- 3D sets as volumes: each held-out volume's slices from {cfg['margin']} below to {cfg['margin']} "
                "above the class's range (the slice bank's: every slice with any label and a sample of empty ones) "
                f"form one query; {support} Clicks go to the centre of the largest 3D error region and edit their "
                "neighbour slices as in the app.")
    return (f"- up to {cfg['max_queries']} query slices per dataset/class, drawn with seed {cfg['seed']} from the "
            f"held-out patients' slices that show the class; {support} 3D sets are scored on axial slices here "
            "(`--volumes` scores them as volumes).")


def _grid_words(cfg: dict[str, Any]) -> str:
    scale = cfg.get("score_scale", 1)
    if scale == 1:
        return "the model grid"
    return (f"a grid {scale} x the model's input (the one-shot start of a support thinner than "
            f"{cfg['fine_scale_thickness']} model-grid pixels segmented at twice the input size, as the engine "
            "does; others on the model grid and resized up)")


def markdown(payload: dict[str, Any]) -> str:
    """The report: protocol, per-dataset table, paired differences to the baseline, per-task table."""
    methods = payload["protocol"]["methods"]
    cfg = payload["protocol"]
    unit = "volume" if cfg.get("volumes") else "slice"
    lines = [
        "# Interactive refinement: click protocol", "",
        f"- checkpoint `{payload['checkpoint']}` (model `{payload['model_version']}`), split seed "
        f"{payload['split_seed']} (fingerprint `{payload['split_fingerprint']}`), {payload['seconds']} s wall, "
        f"{payload['cpu_seconds']} s CPU",
        f"- `learned`: click refiner `{payload.get('click_refiner')}`; on starts read at twice the input size "
        + (f"the fine refiner `{payload['fine_click_refiner']}`" if payload.get("fine_click_refiner")
           else "the same refiner")
        + (f"; on single slices read at the input size the sequential refiner `{payload['sequential_click_refiner']}`"
           " (each click refines the previous output)" if payload.get("sequential_click_refiner") else ""),
        _queries_line(cfg),
        f"- each next click at the centre of the largest error region (positive in a missed region, negative in a "
        f"false positive); {cfg['max_clicks']} clicks at most; clicks to Dice {cfg['target']} capped at "
        f"{cfg['max_clicks']} (0 = one-shot already there). Dice per {unit} on {_grid_words(cfg)}, "
        f"averaged over {unit}s, then over a dataset's classes. "
        "`disc` is the non-learned baseline (a disc of fixed radius at each click, on the clicked slice).",
        f"- settings: `{json.dumps(payload['refine'])}`", "",
        "## Per dataset: Dice after 0 / 1 / 3 / 5 clicks, clicks to target", "",
        "| dataset | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods),
    ]
    for dataset, row in summary(payload).items():
        cells = [f"{row[m]['dice@0']:.3f} / {row[m]['dice@1']:.3f} / {row[m]['dice@3']:.3f} / {row[m]['dice@5']:.3f}"
                 f", **{row[m]['clicks']:.1f}**" for m in methods]
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    lines += ["", f"Mean CPU seconds per refinement call (all clicks so far, {_grid_words(cfg)}, one thread): "
              + ", ".join(f"{m} {summary(payload)['mean over datasets'][m]['seconds']:.3f}" for m in methods)
              if payload["tasks"] else ""]
    differences = paired_differences(payload)
    if differences:
        baseline = cfg.get("baseline", "disc")
        others = list(next(iter(differences.values())))
        fewest = min(len(t["query_curves"][baseline]) for t in payload["tasks"] if "query_curves" in t)
        resamples = cfg.get("bootstrap_resamples", BOOTSTRAP_RESAMPLES)
        lines += ["", f"## Against `{baseline}`: paired difference in Dice after "
                  + " / ".join(str(n) for n in REPORT_AT) + " clicks, with 95 % bootstrap intervals", "",
                  f"Each {unit} is refined by both methods from the same start with the same simulated user; the "
                  f"{unit}s of each class are resampled ({resamples} draws, seed {cfg['seed']}"
                  + ("; a unit is a query with one support draw, so a query counts once per draw" if
                     int(cfg.get("support_draws", 1)) > 1 else "") + "). An interval that "
                  "contains 0 is no evidence either way"
                  + (f"; with fewer than {FEW_QUERIES} {unit}s in a class (here as few as {fewest}) the bootstrap "
                     "understates the uncertainty." if fewest < FEW_QUERIES else "."), "",
                  "| dataset | " + " | ".join(f"{m} − {baseline}" for m in others) + " |",
                  "|---|" + "---|" * len(others)]
        for dataset, row in differences.items():
            cells = [" / ".join(f"{row[m][n][0]:+.3f} [{row[m][n][1]:+.3f}, {row[m][n][2]:+.3f}]" for n in REPORT_AT)
                     for m in others]
            lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    lines += ["", "## Per dataset / class (Dice after 5 clicks, clicks to target)", "",
              f"| dataset / class | 2D/3D | {unit}s | one-shot | " + " | ".join(methods) + " |",
              "|---|---|---|---|" + "---|" * len(methods)]
    for t in payload["tasks"]:
        cells = [f"{t['dice_curve'][m][min(5, len(t['dice_curve'][m]) - 1)]:.3f}, {t['clicks_to_target'][m]:.1f}"
                 for m in methods]
        lines.append(f"| {t['dataset']} / {t['class_name']} | {'3D' if t['is_3d'] else '2D'} | {t['queries']} | "
                     f"{t['dice_curve'][methods[0]][0]:.3f} | " + " | ".join(cells) + " |")
    if payload["notes"]:
        lines += ["", "## Notes", "", *[f"- {n}" for n in payload["notes"]]]
    return "\n".join(lines) + "\n"


def write(payload: dict[str, Any], out: Path) -> None:
    """refinement.json / .md (refinement_volumes.* for the volume protocol) in `out`, written atomically."""
    stem = "refinement_volumes" if payload["protocol"].get("volumes") else "refinement"
    text = json.dumps(json_safe(payload), indent=1)
    atomic_write(out / f"{stem}.json", lambda tmp: tmp.write_text(text))
    report = markdown(payload)
    atomic_write(out / f"{stem}.md", lambda tmp: tmp.write_text(report))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iris evaluate-refinement", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("assets/weights/iris2d.pt"))
    parser.add_argument("--split", type=Path, default=None, help="split JSON (default: split.json beside the weights)")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--datasets", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/refinement"))
    parser.add_argument("--click-refiner", type=Path, default=None,
                        help=f"weights of method 'learned' (default: {CLICK_REFINER_FILE} beside the checkpoint)")
    parser.add_argument("--fine-click-refiner", type=Path, default=None,
                        help="weights of method 'learned' on starts read at twice the input size (default: "
                        f"{FINE_CLICK_REFINER_FILE} beside the checkpoint, where there is one)")
    parser.add_argument("--no-fine-click-refiner", dest="fine_refiner", action="store_false",
                        help="refine starts read at twice the input size with the model-grid refiner too")
    parser.add_argument("--sequential-click-refiner", type=Path, default=None,
                        help="weights of method 'learned' on single slices read at the input size, refined click "
                        f"by click (default: {SEQUENTIAL_CLICK_REFINER_FILE} beside the checkpoint, where there is "
                        "one)")
    parser.add_argument("--no-sequential", dest="sequential", action="store_false",
                        help="restart every click from the one-shot start with the model-grid refiner")
    parser.add_argument("--methods", nargs="*", default=list(RefineEvalConfig.methods))
    parser.add_argument("--max-queries", type=int, default=RefineEvalConfig.max_queries)
    parser.add_argument("--seed", type=int, default=RefineEvalConfig.seed)
    parser.add_argument("--support-draws", type=int, default=RefineEvalConfig.support_draws,
                        help="supports per class (one patient each, seeds seed, seed + 1, ...), every query refined "
                        "from each one's start")
    parser.add_argument("--score-scale", type=int, default=RefineEvalConfig.score_scale,
                        help="click and score on a grid this multiple of the model's input (1: the model grid)")
    parser.add_argument("--fine-scale-thickness", type=float, default=RefineEvalConfig.fine_scale_thickness,
                        help="thin-support limit for the twice-input-size start (0: never)")
    parser.add_argument("--volumes", action="store_true",
                        help="score the 3D sets as volumes (3D click placement and Dice, neighbour slices edited)")
    parser.add_argument("--dev", action="store_true",
                        help="run on TRAINING patients (for choosing settings), never for reported numbers")
    parser.add_argument("--workers", type=int, default=1, help="processes, one task each at a time (CPU time is "
                        "reported summed over them)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    split_path = args.split or args.checkpoint.parent / "split.json"
    if not split_path.exists():
        raise IrisInputError(f"split file {split_path} not found: pass --split")
    split = Split.load(split_path)
    if args.dev:
        split = dev_split(split)
    config = RefineEvalConfig(methods=tuple(args.methods), max_queries=args.max_queries, seed=args.seed,
                              support_draws=args.support_draws,
                              volumes=args.volumes, score_scale=args.score_scale,
                              fine_scale_thickness=args.fine_scale_thickness)
    for method in config.methods:
        RefineConfig(method=method)
    payload = run(args.checkpoint, split, config, RefineConfig(sequential=args.sequential), datasets=args.datasets,
                  data_root=args.data_root, workers=max(1, args.workers), click_refiner=args.click_refiner,
                  fine_click_refiner=args.fine_click_refiner, use_fine_refiner=args.fine_refiner,
                  sequential_click_refiner=args.sequential_click_refiner)
    write(payload, args.out)
    overall = summary(payload).get("mean over datasets", {})
    print(json.dumps({"report": str(args.out / "refinement.md"), "seconds": payload["seconds"],
                      "mean": {m: {k: round(v, 3) for k, v in s.items() if not math.isnan(v)}
                               for m, s in overall.items()}}))
    return payload
