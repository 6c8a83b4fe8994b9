"""`iris train-refiner`: train the click refiner on a frozen IRIS model with simulated clicks.

Each episode (the IRIS training mix: real, task-augmented, superpixel and synthetic tasks of the TRAIN
patients and classes) gives a one-shot prediction of the frozen model. A simulated user clicks 1 to
`max_clicks` times, each click at the centre of the largest error region of the refiner's current output
(as in the evaluation protocol, every output restarts from the one-shot prediction with all clicks so far);
the loss (Dice + BCE) is taken on the output after the last click. With `local_blend` the output is what
method "learned" returns on a clicked slice: the refiner averaged with the image-aware local edit of the start
(`RefineConfig.learned_weight`), so the refiner learns to complement that edit. A share of the starts is
degraded (emptied, or swapped for another slice's prediction) so that the refiner also learns to grow a
structure the one-shot prediction missed from a click or two; with `merged_start_fraction` a share is merged with
another slice's prediction (an over-segmentation: negative clicks must trim the wrong part and keep the right
one); with `grown_start_fraction` a share is united with a wide band around the truth (the structure inside a
larger blob, which negative clicks must trim without emptying the mask). Resumable (`--resume`), time-limited;
`--init` fine-tunes a shipped refiner (its own configuration, a fresh optimizer and schedule).
`--fine-thin-only` trains the refiner for thin results read at twice the input size (`click_refiner_fine.pt`):
slices at that size, the IRIS features of that input, thicker classes turned into boundary bands as in
`iris train --fine-thin-only`. `--sequential` trains a sequential refiner (`click_refiner_sequential.pt`, as
RITM): each click is read on the refiner's previous output (every click so far honoured), the one-shot start
beside it, and the loss is taken on the output after the last click read on the output before it; a restarting
`--init` becomes one first (`as_sequential`: the start's channels enter with zero weights).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from iris_engine.checkpoint import (
    CLICK_REFINER_FILE,
    FINE_CLICK_REFINER_FILE,
    SEQUENTIAL_CLICK_REFINER_FILE,
    load_checkpoint,
    load_click_refiner,
    save_click_refiner,
)
from iris_engine.config import InferenceConfig, TrainConfig
from iris_engine.data.episodes import EpisodeConfig, EpisodeSampler
from iris_engine.data.slices import SliceBank, build_slice_bank
from iris_engine.data.splits import Split
from iris_engine.errors import IrisInputError
from iris_engine.input_scale import FINE_SCALE
from iris_engine.model.click_refiner import (
    NEGATIVE,
    POSITIVE,
    ClickRefiner,
    ClickRefinerConfig,
    as_sequential,
    click_inputs,
    widen,
)
from iris_engine.model.iris import IrisModel
from iris_engine.refinement import RefineConfig, honour, local_edit, next_click
from iris_engine.training.losses import dice_bce_loss
from iris_engine.training.run import episode_source
from iris_engine.training.trainer import EpisodeBatchLike, EpisodeSource, lr_factor, thin_targets, training_autocast

LAST = "refiner_last.pt"


@dataclass(frozen=True)
class ClickTrainConfig:
    """The click refiner's training recipe."""

    iterations: int = 3000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_iterations: int = 100
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    max_clicks: int = 6
    threshold: float = 0.5
    degraded_start_fraction: float = 0.3  # share of starts emptied or swapped for another slice's prediction
    merged_start_fraction: float = 0.0  # share of starts united with another slice's prediction (over-segmented)
    grown_start_fraction: float = 0.0  # share of starts united with a wide band around the truth (object in a blob)
    grown_band: tuple[float, float] = (0.04, 0.15)  # that band's width, drawn uniformly, as a fraction of the side
    grown_probability: float = 0.9  # the start's probability inside that band (at least)
    local_blend: float = 0.0  # weight of the local edit in the trained output (1 - learned_weight: as inferred)
    # the refiner for results read at FINE_SCALE x the input size: slices that fine, thicker classes as bands
    fine_thin_only: bool = False
    empty_start_probability: float = 0.01
    # a sequential refiner (ClickRefinerConfig.sequential): each training click read on its previous output
    sequential: bool = False
    # on a CPU with native bfloat16, the frozen model's and the refiner's forward passes run under bfloat16 autocast
    # (the refiner's weights, its optimiser and the loss stay float32): 2.6 -> 1.7 s per step (benchmarks/training.md)
    cpu_bf16: bool = True
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 25


class ThinTargets:
    """Episodes of `source` (slices at FINE_SCALE x the model's input) whose classes at least as thick as the
    engine's fine-scale limit became boundary bands, in supports and queries alike (`trainer.thin_targets`)."""

    def __init__(self, source: EpisodeSource):
        self.source = source

    def sample_batch(self, batch_size: int) -> EpisodeBatchLike:
        batch = self.source.sample_batch(batch_size)
        thin_targets(batch, FINE_SCALE * InferenceConfig.fine_scale_thickness)
        return batch

    def get_state(self) -> dict[str, Any]:
        return self.source.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.source.set_state(state)


@dataclass
class ClickBatch:
    """Model-grid tensors of B query slices: image (B,1,S,S), start probability, truth, IRIS pixel features."""

    image: torch.Tensor
    start: torch.Tensor
    truth: torch.Tensor
    features: torch.Tensor


def one_shot_batch(model: IrisModel, sampler: EpisodeSource, batch_size: int,
                   device: torch.device | None = None) -> ClickBatch:
    """One-shot predictions of the frozen model on a batch of single-class episodes (on `device`)."""
    batch = sampler.sample_batch(batch_size)
    support_images, support_masks, query_images, query_masks = (
        t[:, 0].to(device) for t in (batch.support_images, batch.support_masks, batch.query_images, batch.query_masks)
    )
    with torch.no_grad():
        tokens = model.encode_task(support_images, support_masks)
        features = model.encode_query(query_images)
        start = torch.sigmoid(model.decode(features, tokens)[:, :1].float())
        pixels = model.decoder.pixel_features(features[1:]).float()  # float32 as at inference, even under autocast
    return ClickBatch(query_images, start, query_masks[:, :1], pixels)


def degrade_starts(start: torch.Tensor, rng: np.random.Generator, fraction: float,
                   empty_probability: float, merged_fraction: float = 0.0) -> torch.Tensor:
    """Replace a `fraction` of the start probabilities (B, 1, S, S): half of them by an empty prediction, half by
    the prediction of the next slice in the batch (a wrong structure); of the rest, a `merged_fraction` becomes
    the maximum of its own and the next slice's prediction (its structure and a wrong one); the others are kept."""
    draw = rng.random(start.shape[0])
    chosen = np.flatnonzero(draw < fraction)
    merged = np.flatnonzero((draw >= fraction) & (draw < fraction + merged_fraction) & (start.shape[0] > 1))
    if chosen.size == 0 and merged.size == 0:
        return start
    degraded = start.clone()
    for i in chosen:
        if rng.random() < 0.5 or start.shape[0] == 1:
            degraded[i] = empty_probability
        else:
            degraded[i] = start[(i + 1) % start.shape[0]]
    for i in merged:
        degraded[i] = torch.maximum(start[i], start[(i + 1) % start.shape[0]])
    return degraded


def grow_starts(start: torch.Tensor, truth: torch.Tensor, rng: np.random.Generator, fraction: float,
                band: tuple[float, float], probability: float = 0.9) -> torch.Tensor:
    """Unite a `fraction` of the start probabilities (B, 1, S, S) with a blob of `probability`: the truth grown by
    a band of random width, so that negative clicks must trim the blob down to the structure inside it."""
    chosen = np.flatnonzero(rng.random(start.shape[0]) < fraction)
    if chosen.size == 0:
        return start
    grown = start.clone()
    size = start.shape[-1]
    for i in chosen:
        inside = truth[i, 0].cpu().numpy() >= 0.5
        if not inside.any():
            continue
        distance = ndimage.distance_transform_edt(~inside)
        blob = torch.from_numpy(distance <= rng.uniform(*band) * size).to(start)
        grown[i, 0] = torch.maximum(start[i, 0], probability * blob)
    return grown


def blend_local_edit(refined: torch.Tensor, batch: ClickBatch, clicks: np.ndarray, weight: float) -> torch.Tensor:
    """(B, 1, S, S) refiner probability averaged with the local edit of the start on the clicked slices, as
    method "learned" does at inference (weight = 1 - learned_weight); unchanged for weight 0."""
    if weight == 0.0:
        return refined
    image, start = batch.image[:, 0].cpu().numpy(), batch.start[:, 0].cpu().numpy()
    edited = start.copy()
    config = RefineConfig()
    for i in np.flatnonzero((clicks > 0).reshape(len(clicks), -1).any(axis=1)):
        edited[i] = local_edit(image[i][..., None], start[i][..., None], clicks[i][..., None], config)[..., 0]
    return (1.0 - weight) * refined + weight * torch.from_numpy(edited)[:, None].to(refined)


def simulate_clicks(refiner: ClickRefiner, batch: ClickBatch, counts: np.ndarray, threshold: float,
                    local_blend: float = 0.0) -> np.ndarray:
    """Click maps (B, S, S) after counts[i] automatic clicks, each placed on the current output (the refiner's,
    blended with the local edit by `local_blend`, every click so far honoured)."""
    truth = batch.truth[:, 0].cpu().numpy() >= 0.5
    current = batch.start[:, 0].cpu().numpy() >= threshold
    clicks = np.zeros(truth.shape, dtype=np.uint8)
    for step in range(int(counts.max())):
        for i in np.flatnonzero(counts > step):
            placed = next_click(current[i], truth[i])
            if placed is not None:
                (r, c), positive = placed
                clicks[i, r, c] = POSITIVE if positive else NEGATIVE
        if step + 1 < counts.max():
            with torch.no_grad():
                inputs = click_inputs(batch.image, batch.start, batch.features, clicks, refiner.config)
                output = blend_local_edit(torch.sigmoid(refiner(inputs)), batch, clicks, local_blend)
            current = honour(output[:, 0].cpu().numpy(), clicks, threshold) >= threshold
    return clicks


def honoured(probability: torch.Tensor, clicks: np.ndarray) -> torch.Tensor:
    """(B, 1, S, S) probabilities with every click of the (B, S, S) maps obeyed (1 positive, 0 negative)."""
    marks = torch.from_numpy(clicks)[:, None].to(probability.device)
    return torch.where(marks == POSITIVE, 1.0, torch.where(marks == NEGATIVE, 0.0, probability))


def simulate_sequential_clicks(refiner: ClickRefiner, batch: ClickBatch, counts: np.ndarray,
                               threshold: float) -> tuple[np.ndarray, torch.Tensor]:
    """Click maps (B, S, S) after counts[i] automatic clicks of a sequential refiner, each placed on its current
    output and read on it (every click so far honoured), and each slice's output before its last click."""
    truth = batch.truth[:, 0].cpu().numpy() >= 0.5
    previous = batch.start.clone()
    before_last = batch.start.clone()
    clicks = np.zeros(truth.shape, dtype=np.uint8)
    for step in range(int(counts.max())):
        current = previous[:, 0].float().cpu().numpy() >= threshold
        for i in np.flatnonzero(counts > step):
            placed = next_click(current[i], truth[i])
            if placed is not None:
                (r, c), positive = placed
                clicks[i, r, c] = POSITIVE if positive else NEGATIVE
        last = torch.from_numpy(counts == step + 1)
        before_last[last] = previous[last]
        if step + 1 < counts.max():
            with torch.no_grad():
                inputs = click_inputs(batch.image, previous, batch.features, clicks, refiner.config, batch.start)
                output = torch.sigmoid(refiner(inputs).float())
            going = torch.from_numpy(counts > step + 1)
            previous[going] = honoured(output, clicks)[going].to(previous.dtype)
    return clicks, before_last


class ClickTrainer:
    """Trains a ClickRefiner into `out_dir`; resumable from out_dir/refiner_last.pt."""

    def __init__(self, model: IrisModel, sampler: EpisodeSource, config: ClickTrainConfig, out_dir: Path,
                 refiner_config: ClickRefinerConfig | None = None, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.sampler, self.config, self.out_dir = sampler, config, out_dir
        default = ClickRefinerConfig(feature_channels=model.config.decoder_channels)
        self.refiner = ClickRefiner(refiner_config or default).to(self.device)
        self.optimizer = torch.optim.AdamW(self.refiner.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        schedule = TrainConfig(iterations=config.iterations, warmup_iterations=config.warmup_iterations,
                               min_lr_ratio=config.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: lr_factor(it, schedule))
        self.rng = np.random.default_rng(config.seed)
        self.iteration, self.elapsed = 0, 0.0

    def resume(self) -> bool:
        path = self.out_dir / LAST
        if not path.exists():
            return False
        state = torch.load(path, map_location=self.device, weights_only=False)  # our own run's state (numpy RNG)
        self.refiner.load_state_dict(state["refiner"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = state["rng"]
        self.sampler.set_state(state["sampler"])
        torch.set_rng_state(state["torch"].cpu())
        self.iteration, self.elapsed = int(state["iteration"]), float(state["elapsed"])
        return True

    def initialise_from(self, path: Path, model_version: str, any_model: bool = False) -> None:
        """Start from a refiner file of the same configuration, trained for this very IRIS model (or, with
        `any_model`, for another one: a warm start after the IRIS model was retrained); a file with fewer
        channels per level is widened first (`widen`: same output, new channels to train)."""
        loaded = load_click_refiner(path)
        if not any_model and loaded.iris_model_version != model_version:
            raise IrisInputError(f"{path} was trained for IRIS model {loaded.iris_model_version}, not {model_version}")
        source, target = loaded.refiner, self.refiner.config
        if target.sequential:
            source = as_sequential(source)
        if source.config != target:
            try:
                if replace(source.config, channels=target.channels) != target:
                    raise ValueError("it differs in more than its channels")
                source = widen(source, target.channels, self.config.seed)
            except ValueError as error:
                raise IrisInputError(f"{path} has another refiner configuration ({error}): {source.config}") from error
        self.refiner.load_state_dict(source.state_dict())

    def _save_state(self) -> None:
        state = {"refiner": self.refiner.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng": self.rng.bit_generator.state,
                 "sampler": self.sampler.get_state(),
                 "torch": torch.get_rng_state(), "iteration": self.iteration, "elapsed": self.elapsed}
        tmp = self.out_dir / f".{LAST}.partial"
        torch.save(state, tmp)
        tmp.replace(self.out_dir / LAST)

    def step(self) -> float:
        with training_autocast(self.device, self.config.cpu_bf16):
            batch = one_shot_batch(self.model, self.sampler, self.config.batch_size, self.device)
            batch.start = degrade_starts(batch.start, self.rng, self.config.degraded_start_fraction,
                                         self.config.empty_start_probability, self.config.merged_start_fraction)
            batch.start = grow_starts(batch.start, batch.truth, self.rng, self.config.grown_start_fraction,
                                      self.config.grown_band, self.config.grown_probability)
            counts = self.rng.integers(1, self.config.max_clicks + 1, size=batch.image.shape[0])
            self.refiner.eval()
            if self.config.sequential:
                clicks, previous = simulate_sequential_clicks(self.refiner, batch, counts, self.config.threshold)
            else:
                clicks = simulate_clicks(self.refiner, batch, counts, self.config.threshold, self.config.local_blend)
                previous = batch.start
            self.refiner.train()
            inputs = click_inputs(batch.image, previous, batch.features, clicks, self.refiner.config, batch.start)
            logits = self.refiner(inputs).float()
        clicked = torch.from_numpy((clicks > 0).reshape(len(clicks), -1).any(axis=1)).to(self.device)
        if self.config.local_blend > 0.0:
            blended = blend_local_edit(torch.sigmoid(logits), batch, clicks, self.config.local_blend)
            logits = torch.logit(blended.clamp(1e-4, 1.0 - 1e-4))
        return self.update(dice_bce_loss(logits, batch.truth, clicked[:, None]))

    def update(self, loss: torch.Tensor) -> float:
        """One optimiser step on `loss` (clipped gradients, scheduled learning rate); returns the loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.refiner.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    def fit(self, time_limit_minutes: float | None = None) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        begin = time.perf_counter()
        start_elapsed = self.elapsed
        losses: list[float] = []
        while self.iteration < self.config.iterations:
            losses.append(self.step())
            self.iteration += 1
            self.elapsed = start_elapsed + time.perf_counter() - begin
            if self.iteration % self.config.log_every == 0 or self.iteration == self.config.iterations:
                record = {"iteration": self.iteration, "loss": float(np.mean(losses[-self.config.log_every:])),
                          "lr": self.scheduler.get_last_lr()[0], "elapsed": round(self.elapsed, 1)}
                with open(self.out_dir / "refiner_log.jsonl", "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
                print(json.dumps(record), flush=True)
            out_of_time = time_limit_minutes is not None and time.perf_counter() - begin >= time_limit_minutes * 60
            if self.iteration % self.config.checkpoint_every == 0 or out_of_time:
                self._save_state()
            if out_of_time:
                break
        self._save_state()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iris train-refiner", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("assets/weights/iris2d.pt"),
                        help="the frozen IRIS model whose predictions the refiner corrects")
    parser.add_argument("--split", type=Path, default=None, help="split JSON (default: split.json beside the weights)")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--datasets", nargs="*", default=None, help="dataset folder names (default: all known)")
    parser.add_argument("--out", type=Path, default=Path("runs/click_refiner"))
    parser.add_argument("--iterations", type=int, default=ClickTrainConfig.iterations)
    parser.add_argument("--batch-size", type=int, default=ClickTrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=ClickTrainConfig.lr)
    parser.add_argument("--warmup-iterations", type=int, default=ClickTrainConfig.warmup_iterations)
    parser.add_argument("--seed", type=int, default=ClickTrainConfig.seed)
    parser.add_argument("--degraded-start-fraction", type=float, default=ClickTrainConfig.degraded_start_fraction,
                        help="share of one-shot starts emptied or swapped for another slice's prediction")
    parser.add_argument("--merged-start-fraction", type=float, default=ClickTrainConfig.merged_start_fraction,
                        help="share of one-shot starts united with another slice's prediction (over-segmented starts "
                        "that negative clicks must trim)")
    parser.add_argument("--grown-start-fraction", type=float, default=ClickTrainConfig.grown_start_fraction,
                        help="share of one-shot starts united with a wide band around the truth (the structure "
                        "inside an over-segmented blob, which negative clicks must trim without emptying it)")
    parser.add_argument("--local-blend", type=float, default=ClickTrainConfig.local_blend,
                        help="train the refiner's output averaged with the local edit by this weight, as method "
                        "'learned' blends them at inference (1 - learned_weight, e.g. 0.5; 0: the refiner alone)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-cpu-bf16", dest="cpu_bf16", action="store_false",
                        help="keep float32 on a CPU with native bfloat16 (default: bfloat16 autocast there)")
    parser.add_argument("--time-limit-minutes", type=float, default=None)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/refiner_last.pt")
    parser.add_argument("--init", type=Path, default=None,
                        help="fine-tune from this click refiner file (trained for the same IRIS model)")
    parser.add_argument("--init-any-model", action="store_true",
                        help="let --init take a refiner trained for another IRIS model (same configuration)")
    parser.add_argument("--bank", type=Path, default=None,
                        help="a slice bank saved by SliceBank.save, of the model's image size (no shared data needed)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--loader-workers", type=int, default=0,
                        help="draw episodes in this many background processes (0: in the training process)")
    parser.add_argument("--channels", type=int, nargs="+", default=None,
                        help="channels per U-Net level (default: the --init refiner's, else "
                        f"{' '.join(map(str, ClickRefinerConfig.channels))}; give them again with --resume); "
                        "wider than --init's: it is widened first")
    parser.add_argument("--without-pixel-features", action="store_true",
                        help="feed the refiner only the clicks' feature similarity maps, not the raw pixel features")
    parser.add_argument("--fine-thin-only", action="store_true",
                        help=f"train the refiner for thin results read at {FINE_SCALE} x the input size (slices and "
                        f"features at that size, thicker classes as boundary bands); saves {FINE_CLICK_REFINER_FILE}")
    parser.add_argument("--sequential", action="store_true",
                        help="train a sequential refiner (each click read on its previous output, the one-shot "
                        f"start beside it; a restarting --init is converted); saves {SEQUENTIAL_CLICK_REFINER_FILE}")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    random.seed(args.seed)  # the band widths of --fine-thin-only
    if not 0.0 <= args.local_blend < 1.0:
        raise IrisInputError(f"--local-blend must lie in [0, 1), not {args.local_blend}")
    if not 0.0 <= args.grown_start_fraction <= 1.0:
        raise IrisInputError(f"--grown-start-fraction must lie in [0, 1], not {args.grown_start_fraction}")
    if min(args.degraded_start_fraction, args.merged_start_fraction) < 0 \
            or args.degraded_start_fraction + args.merged_start_fraction > 1.0:
        raise IrisInputError("--degraded-start-fraction and --merged-start-fraction must be >= 0 and sum to at most 1")
    if args.sequential and (args.fine_thin_only or args.local_blend > 0.0):
        raise IrisInputError("--sequential trains the refiner of single slices read at the input size, on its own "
                             "output: not with --fine-thin-only or --local-blend")
    split = Split.load(args.split or args.checkpoint.parent / "split.json")
    model = load_checkpoint(args.checkpoint).model
    config = ClickTrainConfig(iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                              warmup_iterations=min(args.warmup_iterations, args.iterations),
                              degraded_start_fraction=args.degraded_start_fraction,
                              merged_start_fraction=args.merged_start_fraction,
                              grown_start_fraction=args.grown_start_fraction, local_blend=args.local_blend,
                              fine_thin_only=args.fine_thin_only, cpu_bf16=args.cpu_bf16, sequential=args.sequential)
    datasets = tuple(args.datasets) if args.datasets else None
    size = model.config.image_size * (FINE_SCALE if config.fine_thin_only else 1)
    if args.bank is not None:
        bank = SliceBank.load(args.bank)
        if bank.size != size:
            raise IrisInputError(f"{args.bank}: {bank.size} px slices, the refiner trains at {size}")
    else:
        bank = build_slice_bank(datasets, root=args.data_root, size=size)
    episodes = EpisodeConfig.from_train_config(TrainConfig(), max_classes=1, queries_per_episode=1,
                                               supports_per_episode=1)
    sampler = episode_source(EpisodeSampler(bank, split, episodes, seed=args.seed), config.batch_size,
                             args.loader_workers, args.seed)
    if config.fine_thin_only:
        sampler = ThinTargets(sampler)
    channels = args.channels or (load_click_refiner(args.init).refiner.config.channels if args.init is not None
                                 else ClickRefinerConfig.channels)
    refiner_config = ClickRefinerConfig(channels=tuple(channels), feature_channels=model.config.decoder_channels,
                                        pixel_features=not args.without_pixel_features, sequential=args.sequential)
    trainer = ClickTrainer(model, sampler, config, args.out, refiner_config, args.device)
    if args.resume and trainer.resume():
        print(f"resumed from iteration {trainer.iteration}", flush=True)
    elif args.init is not None:
        trainer.initialise_from(args.init, model.version, args.init_any_model)
        print(f"initialised from {args.init}", flush=True)
    trainer.fit(args.time_limit_minutes)
    name = FINE_CLICK_REFINER_FILE if config.fine_thin_only else CLICK_REFINER_FILE
    name = SEQUENTIAL_CLICK_REFINER_FILE if config.sequential else name
    path = save_click_refiner(args.out / name, trainer.refiner, model.version, {
        "iterations": trainer.iteration, "train_seconds": round(trainer.elapsed, 1), "recipe": asdict(config),
        "iris_checkpoint": str(args.checkpoint), "init": None if args.init is None else str(args.init),
        "split_fingerprint": split.fingerprint(),
        "command": "iris train-refiner " + " ".join(sys.argv[1:] if argv is None else argv),
    })
    print(json.dumps({"refiner": str(path), "iterations": trainer.iteration}), flush=True)
    return path


if __name__ == "__main__":
    main()
