"""`iris train`: build the slice bank, split and episode sampler from the shared data, then train."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from iris_engine.allocator import keep_freed_memory
from iris_engine.checkpoint import load_checkpoint, save_checkpoint
from iris_engine.config import TRAINABLE_PARTS, ModelConfig, TrainConfig
from iris_engine.data.episodes import EpisodeConfig, EpisodeSampler
from iris_engine.data.parallel_episodes import ParallelEpisodes
from iris_engine.data.slices import SliceBank, build_slice_bank
from iris_engine.data.splits import Split, make_split
from iris_engine.errors import IrisInputError
from iris_engine.input_scale import FINE_SCALE
from iris_engine.memory_bank import MemoryBank
from iris_engine.model.iris import IrisModel
from iris_engine.training.bank_refresh import FineCheck, refresh_memory_bank
from iris_engine.training.trainer import FINAL_CHECKPOINT, EpisodeSource, Trainer

SPLIT_FILE = "split.json"


class ResumableSampler:
    """Adds save/restore of the sampler's random state (numpy and torch generators)."""

    def __init__(self, sampler: EpisodeSampler):
        self.sampler = sampler

    def sample_batch(self, batch_size: int) -> Any:
        return self.sampler.sample_batch(batch_size)

    def get_state(self) -> dict[str, Any]:
        return {"numpy": self.sampler.rng.bit_generator.state, "torch": self.sampler.torch_gen.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.sampler.rng.bit_generator.state = state["numpy"]
        self.sampler.torch_gen.set_state(state["torch"])


def episode_source(sampler: EpisodeSampler, batch_size: int, workers: int, seed: int) -> EpisodeSource:
    """Episodes from `workers` background processes, or (0) from the training process with exact resume."""
    return ParallelEpisodes(sampler, batch_size, workers, seed) if workers > 0 else ResumableSampler(sampler)


def final_memory_bank(model: IrisModel, bank: SliceBank, split: Split, config: TrainConfig, seed: int
                      ) -> tuple[MemoryBank, dict[str, Any]]:
    """The memory bank rebuilt from the final weights at the model's input size; a model trained on slices twice
    that size also keeps fine entries for its thin classes (as `iris refresh-bank`), with their checks."""
    size = model.config.image_size
    if bank.size == size:
        return refresh_memory_bank(model, bank, split, config.memory_momentum, seed=seed), {}
    checks: dict[str, FineCheck] = {}
    memory = refresh_memory_bank(model, bank.resized(size), split, config.memory_momentum, seed=seed,
                                 fine_bank=bank, checks=checks)
    return memory, {key: asdict(check) for key, check in checks.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iris train", description="Episodic training of an IRIS model.")
    parser.add_argument("--out", type=Path, default=Path("runs/default"), help="run folder (checkpoints, logs)")
    parser.add_argument("--data-root", type=Path, default=None, help="MSD-style datasets root (default ../shared/data)")
    parser.add_argument("--datasets", nargs="*", default=None, help="dataset folder names (default: all known)")
    parser.add_argument("--iterations", type=int, default=TrainConfig.iterations)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--image-size", type=int, default=ModelConfig.image_size, help="side of the training slices")
    parser.add_argument("--input-size", type=int, default=None,
                        help="the model's input size (default: the slices' size); half of it, with "
                             "--low-res-fraction, trains a model of that size also at twice it, the fine input "
                             "scale of thin supports")
    parser.add_argument("--synthetic-fraction", type=float, default=TrainConfig.synthetic_fraction)
    parser.add_argument("--superpixel-fraction", type=float, default=TrainConfig.superpixel_fraction,
                        help="share of superpixel pseudo-label episodes")
    parser.add_argument("--same-volume-fraction", type=float, default=TrainConfig.same_volume_fraction,
                        help="share of real 3D episodes whose support and query are nearby slices of one volume")
    parser.add_argument("--self-pair-fraction", type=float, default=TrainConfig.self_pair_fraction,
                        help="share of real episodes whose query is the support slice itself, augmented on its own "
                             "(the support must be read back)")
    parser.add_argument("--task-augment-prob", type=float, default=TrainConfig.task_augment_prob,
                        help="probability of task augmentation for a real episode")
    parser.add_argument("--warmup-iterations", type=int, default=TrainConfig.warmup_iterations)
    parser.add_argument("--prior-size", type=int, default=TrainConfig().model.prior_size,
                        help="side of the support-mask prior carried in each class embedding")
    parser.add_argument("--decoder-channels", type=int, default=ModelConfig.decoder_channels,
                        help="width of the decoder's full-size features (a warm start from another width takes the "
                             "encoder, the task encoding and the attention blocks; the full-size path starts anew)")
    parser.add_argument("--no-similarity-path", action="store_true", help="the v1 architecture (no support context)")
    parser.add_argument("--prior-dropout", type=float, default=TrainConfig.prior_dropout,
                        help="share of episodes segmented with the support-mask prior flattened to its mean (v2), so "
                             "that the support's features must be read")
    parser.add_argument("--fine-class-path", action="store_true",
                        help="continue the class path to full size with the encoder's skips (a warm start from a "
                             "model without it starts from that model's output)")
    parser.add_argument("--train-only", choices=sorted(TRAINABLE_PARTS), default=TrainConfig.trainable,
                        help="train only this part, every other weight frozen (fine_class_path: the decoder's "
                             "full-size class path of --fine-class-path, so a warm start changes its source's output "
                             "only there)")
    parser.add_argument("--time-limit-minutes", type=float, default=None,
                        help="stop (and checkpoint) after this many minutes of this invocation (a resumed run gets "
                             "the full limit again); the final memory bank is rebuilt after it (about 6 minutes on one "
                             "core with --input-size 128 on 256 px slices)")
    parser.add_argument("--low-res-fraction", type=float, default=TrainConfig.low_res_fraction,
                        help="share of batches averaged down to half the image size (one model for both sizes)")
    parser.add_argument("--fine-thin-only", action="store_true",
                        help="with --low-res-fraction: the full-size batches train on thin targets only (thicker "
                             "classes become their boundary bands), as the engine reads only thin supports at 2x")
    parser.add_argument("--no-cpu-bf16", action="store_true",
                        help="train in float32 on a CPU that computes bfloat16 natively (default: bfloat16 autocast "
                             "there, 1.6-2.0x faster per step)")
    parser.add_argument("--fit-schedule-to-time", action="store_true",
                        help="end the learning-rate decay when the time limit ends (at most --iterations)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--loader-workers", type=int, default=0,
                        help="draw episodes in this many background processes (0: in the training process, "
                             "bit-exact resume)")
    parser.add_argument("--bank", type=Path, default=None,
                        help="a slice bank saved by SliceBank.save (e.g. on a machine without the shared data); "
                             "its size is the image size")
    parser.add_argument("--split", type=Path, default=None,
                        help="use this split (copied into OUT) instead of drawing one from the seed")
    parser.add_argument("--init", type=Path, default=None, help="fine-tune from this checkpoint")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt exactly")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def train_config(args: argparse.Namespace, input_size: int) -> TrainConfig:
    """The recipe `iris train` runs, from its parsed arguments and the model's input size."""
    model_config = ModelConfig(image_size=input_size, decoder_channels=args.decoder_channels,
                               similarity_path=not args.no_similarity_path, prior_size=args.prior_size,
                               fine_class_path=args.fine_class_path)
    return TrainConfig(
        iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        synthetic_fraction=args.synthetic_fraction, superpixel_fraction=args.superpixel_fraction,
        same_volume_fraction=args.same_volume_fraction, self_pair_fraction=args.self_pair_fraction,
        prior_dropout=args.prior_dropout, trainable=args.train_only,
        task_augment_prob=args.task_augment_prob,
        warmup_iterations=min(args.warmup_iterations, args.iterations), num_threads=args.threads, model=model_config,
        low_res_fraction=args.low_res_fraction, fine_thin_only=args.fine_thin_only, cpu_bf16=not args.no_cpu_bf16,
    )


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    bank = SliceBank.load(args.bank) if args.bank is not None else None
    image_size = bank.size if bank is not None else args.image_size
    input_size = args.input_size or image_size
    if input_size not in (image_size, image_size // FINE_SCALE):
        raise IrisInputError(f"--input-size must be the slices' size {image_size} or half of it, got {input_size}")
    config = train_config(args, input_size)
    datasets = tuple(args.datasets) if args.datasets else None
    split_path = out / SPLIT_FILE
    if split_path.exists():
        split = Split.load(split_path)
    else:
        split = Split.load(args.split) if args.split else make_split(args.seed, datasets=datasets, root=args.data_root)
        split.save(split_path)
    if bank is None:
        bank = build_slice_bank(datasets, root=args.data_root, size=args.image_size, verbose=True)
    sampler = EpisodeSampler(bank, split, EpisodeConfig.from_train_config(config), seed=args.seed)
    episodes = episode_source(sampler, config.batch_size, args.loader_workers, args.seed)
    trainer = Trainer(config, episodes, out, device=args.device, time_limit_minutes=args.time_limit_minutes,
                      fit_schedule_to_time=args.fit_schedule_to_time)
    if args.resume and trainer.resume():
        print(f"resumed from iteration {trainer.iteration}", flush=True)
    elif args.init is not None:
        taken = trainer.initialise_from(args.init)
        print(f"initialised {taken} weight tensors from {args.init}", flush=True)
    result = trainer.fit()
    if trainer.context.is_main:
        loaded = load_checkpoint(result.checkpoint)
        memory, checks = final_memory_bank(loaded.model, bank, split, config, args.seed)
        save_checkpoint(out / FINAL_CHECKPOINT, loaded.model, memory, loaded.training_state,
                        {**loaded.metadata, "split": split_path.name, "split_fingerprint": split.fingerprint(),
                         **({"memory_bank_fine_checks": checks} if checks else {})})
        summary = {"checkpoint": str(out / FINAL_CHECKPOINT), "iterations": result.iterations,
                   "final_loss": result.final_loss, "seconds": round(result.seconds, 1)}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary), flush=True)
    return out / FINAL_CHECKPOINT


if __name__ == "__main__":
    keep_freed_memory()  # `iris train` has set it already in `cli.main`
    main()
