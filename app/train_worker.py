"""Training worker process: fine-tune a checkpoint on the studio's exported slices (`python -m app.train_worker`)."""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

from app.jobs import DATASET, FINAL_FILE
from iris_engine.allocator import keep_freed_memory
from iris_engine.checkpoint import load_checkpoint, save_checkpoint
from iris_engine.config import ModelConfig, TrainConfig
from iris_engine.data.episodes import EpisodeConfig, EpisodeSampler
from iris_engine.data.msd import MSDDataset
from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import Split
from iris_engine.memory_bank import MemoryBank
from iris_engine.training.bank_refresh import refresh_memory_bank
from iris_engine.training.run import ResumableSampler
from iris_engine.training.trainer import Trainer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Fine-tune IRIS on studio-curated slices.")
    parser.add_argument("--out", type=Path, required=True, help="run folder (log, checkpoints, summary)")
    parser.add_argument("--data-root", type=Path, required=True, help="folder holding the exported MSD dataset")
    parser.add_argument("--init", type=Path, default=None, help="checkpoint to fine-tune (default: from scratch)")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit as soon as this process (the studio that started the run) is gone")
    return parser


def exit_with_parent(parent_pid: int, interval_s: float = 0.5) -> threading.Thread:
    """Watchdog: a run whose studio died (killed, crashed) stops instead of training on unobserved."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(3)

    thread = threading.Thread(target=watch, name="parent-watchdog", daemon=True)
    thread.start()
    return thread


def carry_over(base: dict[str, object], fresh: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    """The fresh bank's entries and counts, plus every class of the base bank the fresh one lacks, with its fine
    entry (kept as the base model encoded them: the fine-tuned model starts from the same weights)."""
    merged = {key: {**dict(base[key]), **fresh[key]} for key in ("embeddings", "counts")}  # type: ignore[call-overload]
    base_fine = dict(base.get("fine_embeddings", {}))  # type: ignore[attr-defined]
    carried = {name: tokens for name, tokens in base_fine.items() if name not in fresh["embeddings"]}
    return {**merged, "fine_embeddings": {**carried, **fresh.get("fine_embeddings", {})}}


def main(argv: list[str] | None = None) -> Path:
    """Train, rebuild the memory bank from the final weights (plain class names) and write final.pt."""
    args = build_parser().parse_args(argv)
    if args.parent_pid is not None:
        exit_with_parent(args.parent_pid)
    model_config = load_checkpoint(args.init).model.config if args.init else ModelConfig()
    n = args.iterations
    config = TrainConfig(iterations=n, batch_size=args.batch_size, lr=args.lr, warmup_iterations=max(1, n // 10),
                         log_every=max(1, n // 100), checkpoint_every=n, num_threads=args.threads,
                         model=model_config)
    cases = MSDDataset(args.data_root / DATASET).case_ids
    split = Split(seed=0, train_cases={DATASET: cases}, test_cases={DATASET: []},
                  patients={DATASET: {c: c for c in cases}}, held_out_fraction=0.0)
    bank = build_slice_bank((DATASET,), root=args.data_root, size=model_config.image_size, cache_dir=None)
    sampler = EpisodeSampler(bank, split, EpisodeConfig.from_train_config(config), seed=0)
    trainer = Trainer(config, ResumableSampler(sampler), args.out, show_progress=False)
    if args.init is not None:
        trainer.initialise_from(args.init)
    result = trainer.fit()
    loaded = load_checkpoint(result.checkpoint)
    refreshed = refresh_memory_bank(loaded.model, bank, split, config.memory_momentum).state_dict()
    prefix = f"{DATASET}/"
    renamed = {k: {name.removeprefix(prefix): v for name, v in refreshed[k].items()}
               for k in ("embeddings", "counts", "fine_embeddings")}
    if args.init is not None:  # every class of the base model's bank stays usable; re-encoded ones win
        renamed = carry_over(load_checkpoint(args.init).memory_bank.state_dict(), renamed)
    memory = MemoryBank.from_state_dict({**refreshed, **renamed})
    final = save_checkpoint(args.out / FINAL_FILE, loaded.model, memory, {}, loaded.metadata)
    summary = {"iterations": result.iterations, "final_loss": result.final_loss, "seconds": round(result.seconds, 1)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return final


if __name__ == "__main__":
    keep_freed_memory()
    main()
