"""Episodic trainer: AdamW, warm-up then exponential decay, clipping, AMP on GPU, EMA memory bank,
exact resume, TensorBoard + JSON-lines log, DDP under torchrun."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from iris_engine.checkpoint import load_checkpoint, save_checkpoint
from iris_engine.config import TRAINABLE_PARTS, InferenceConfig, TrainConfig
from iris_engine.data.pseudo_tasks import boundary_band
from iris_engine.errors import IrisInputError
from iris_engine.input_scale import FINE_SCALE, structure_thickness
from iris_engine.memory_bank import MemoryBank
from iris_engine.model.iris import IrisModel
from iris_engine.precision import native_bf16
from iris_engine.training.distributed import DistributedContext, all_reduce_mean, init_distributed
from iris_engine.training.losses import dice_bce_loss

LAST_CHECKPOINT = "last.pt"
FINAL_CHECKPOINT = "final.pt"
LOG_FILE = "train_log.jsonl"
# what a resumed run may change: its length (a later session may lengthen or shorten it; --fit-schedule-to-time
# changes it anyway) and how this machine computes it
PER_INVOCATION_FIELDS = frozenset({"iterations", "warmup_iterations", "num_threads", "cpu_bf16"})


class EpisodeBatchLike(Protocol):
    support_images: torch.Tensor  # (B, K, 1, *S)
    support_masks: torch.Tensor  # (B, K, L, *S)
    query_images: torch.Tensor  # (B, Q, 1, *S)
    query_masks: torch.Tensor  # (B, Q, L, *S)
    class_valid: torch.Tensor  # (B, L)
    task_names: list[list[tuple[str, str] | None]]


class EpisodeSource(Protocol):
    """Anything that samples episode batches and can save/restore its random state."""

    def sample_batch(self, batch_size: int) -> EpisodeBatchLike: ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    checkpoint: Path
    iterations: int
    final_loss: float
    seconds: float


def lr_factor(iteration: int, config: TrainConfig) -> float:
    """Linear warm-up, then exponential decay reaching `min_lr_ratio` at the last iteration."""
    if iteration < config.warmup_iterations:
        return (iteration + 1) / config.warmup_iterations
    span = max(1, config.iterations - config.warmup_iterations)
    progress = min(1.0, (iteration - config.warmup_iterations) / span)
    return math.exp(progress * math.log(config.min_lr_ratio))


def training_autocast(device: torch.device, cpu_bf16: bool) -> torch.autocast:
    """bfloat16 autocast for the forward pass: always on CUDA; on a CPU where it computes bfloat16 natively and
    `cpu_bf16` is on; else disabled (float32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16 and native_bf16())


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def half_resolution(batch: EpisodeBatchLike) -> None:
    """Average the batch's images down to half size in place; a mask pixel is set where half its area was."""
    for name in ("support_images", "support_masks", "query_images", "query_masks"):
        value = getattr(batch, name)
        small = F.interpolate(value.flatten(0, 1), scale_factor=0.5, mode="area").unflatten(0, value.shape[:2])
        setattr(batch, name, small if name.endswith("images") else (small >= 0.5).float())


def thin_targets(batch: EpisodeBatchLike, max_thickness: float, widths: tuple[int, ...] = (1, 2, 3)) -> None:
    """In place: each episode's class whose support masks are `max_thickness` pixels thick or more becomes its
    inner boundary band (a random width of `widths` pixels), in its supports and queries alike; such episodes no
    longer name their structure (they update no memory-bank entry)."""
    count = batch.support_masks.shape[0]
    unnamed = list(getattr(batch, "synthetic", None) or [False] * count)
    for b in range(count):
        thickness = structure_thickness(batch.support_masks[b])  # inf for an empty slot: nothing to change there
        thick = torch.isfinite(thickness) & (thickness >= max_thickness)
        if not bool(thick.any()):
            continue
        width = random.choice(widths)
        for name in ("support_masks", "query_masks"):
            masks = getattr(batch, name)
            chosen = masks[b][:, thick].cpu().numpy() >= 0.5
            bands = np.stack([[boundary_band(mask, width) for mask in row] for row in chosen])
            masks[b][:, thick] = torch.from_numpy(bands).to(masks)
        unnamed[b] = True
    batch.synthetic = unnamed


def _episode_embeddings(
    model: IrisModel, batch: EpisodeBatchLike, flat_prior: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Task tokens averaged over each episode's supports (B, L, T, C), and the query logits (the episodes in
    `flat_prior` segmented with their support-mask prior flattened; the tokens returned keep it)."""
    tokens = model.episode_tokens(batch.support_images, batch.support_masks)
    return tokens, model.segment_episodes(batch.query_images, tokens, flat_prior)


def episode_loss(logits: torch.Tensor, batch: EpisodeBatchLike, spatial_dims: int) -> torch.Tensor:
    """Dice + BCE of query logits (B, Q, L, *S) against the batch's query masks, over its valid classes."""
    valid = batch.class_valid[:, None, :].expand(-1, logits.shape[1], -1)
    return dice_bce_loss(logits.float(), batch.query_masks, valid, spatial_dims=spatial_dims)


def embeddings_and_loss(model: IrisModel, batch: EpisodeBatchLike, flat_prior: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """One training forward pass: the episodes' task tokens (for the memory bank) and their loss."""
    tokens, logits = _episode_embeddings(model, batch, flat_prior)
    return tokens, episode_loss(logits, batch, model.config.spatial_dims)


def _update_memory_bank(bank: MemoryBank, tokens: torch.Tensor, batch: EpisodeBatchLike) -> None:
    """EMA of the named classes of real episodes (pseudo-label and synthetic tasks name no structure)."""
    pseudo = getattr(batch, "synthetic", None) or [False] * len(batch.task_names)
    for b, names in enumerate(batch.task_names):
        if pseudo[b]:
            continue
        for index, task in enumerate(names):
            if task is not None and bool(batch.class_valid[b, index]):
                dataset, class_name = task
                bank.update(f"{dataset}/{class_name}", tokens[b, index])


def trainable_parameters(model: torch.nn.Module, part: str) -> list[torch.nn.Parameter]:
    """The parameters of `part` (`TRAINABLE_PARTS`), which alone keep requires_grad; every other one is frozen."""
    prefixes = TRAINABLE_PARTS[part]
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(prefixes))
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


class Trainer:
    """Runs episodic training into `out_dir`, resumable from `out_dir/last.pt`."""

    def __init__(
        self,
        config: TrainConfig,
        episodes: EpisodeSource,
        out_dir: str | Path,
        device: str = "cpu",
        time_limit_minutes: float | None = None,
        show_progress: bool = True,
        fit_schedule_to_time: bool = False,
    ):
        self.config = config
        self.episodes = episodes
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.time_limit = None if time_limit_minutes is None else time_limit_minutes * 60.0
        self.show_progress = show_progress
        if fit_schedule_to_time and time_limit_minutes is None:
            raise ValueError("fit_schedule_to_time needs a time limit")
        self.fit_schedule_to_time = fit_schedule_to_time
        self._planned_iterations = config.iterations
        self.context: DistributedContext = init_distributed(self.device)
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        seed_everything(config.seed + self.context.rank)
        self.model = IrisModel(config.model).to(self.device)
        self.memory_bank = MemoryBank(config.memory_momentum)
        self.optimizer = torch.optim.AdamW(trainable_parameters(self.model, config.trainable), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: lr_factor(it, config))
        self.iteration = 0
        self.elapsed = 0.0
        self._resumed_at = 0.0  # elapsed time restored by resume(): the time limit counts this session only

    def initialise_from(self, checkpoint: str | Path) -> int:
        """Start from another checkpoint (fresh optimiser); returns how many weight tensors were taken.

        Same architecture: every weight and the memory bank. Another architecture (a warm start of v2 from v1):
        every tensor whose name and shape match; the rest keep their fresh initialisation, the bank starts empty.
        """
        loaded = load_checkpoint(checkpoint, map_location=self.device)
        source = loaded.model.state_dict()
        if loaded.model.config == self.config.model:
            self.model.load_state_dict(source)
            self.memory_bank = loaded.memory_bank
            return len(source)
        target = self.model.state_dict()
        matching = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
        self.model.load_state_dict(matching, strict=False)
        return len(matching)

    def resume(self) -> bool:
        """Restore everything from out_dir/last.pt; False when there is none."""
        path = self.out_dir / LAST_CHECKPOINT
        if not path.exists():
            return False
        loaded = load_checkpoint(path, map_location=self.device, expected=self.config.model)
        state = loaded.training_state
        _check_same_recipe(state.get("train_config", {}), _config_dict(self.config), path)
        self.model.load_state_dict(loaded.model.state_dict())
        self.memory_bank = loaded.memory_bank
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.iteration = int(state["iteration"])
        self.elapsed = self._resumed_at = float(state["elapsed"])
        _set_rng_state(state["rng"])
        self.episodes.set_state(state["episodes"][self.context.rank])
        return True

    def _episode_states(self) -> list[dict[str, Any]]:
        """Every rank's sampler state (a collective call under DDP), indexed by rank."""
        state = self.episodes.get_state()
        if not self.context.enabled:
            return [state]
        states: list[Any] = [None] * self.context.world_size
        dist.all_gather_object(states, state)
        return states

    def _training_state(self, episode_states: list[dict[str, Any]] | None) -> dict[str, Any]:
        """What the run was (iteration, time, recipe), plus with `episode_states` all that `resume` needs (optimiser,
        scheduler, RNG and sampler states: twice the weights' size, kept in last.pt only)."""
        record = {"iteration": self.iteration, "elapsed": self.elapsed, "train_config": _config_dict(self.config)}
        if episode_states is None:
            return record
        return {**record, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": _rng_state(), "episodes": episode_states}

    def save(self, name: str, episode_states: list[dict[str, Any]] | None = None) -> Path:
        resumable = name != FINAL_CHECKPOINT
        return save_checkpoint(
            self.out_dir / name,
            self.model,
            self.memory_bank,
            training_state=self._training_state((episode_states or self._episode_states()) if resumable else None),
            metadata={
                "model_version": f"{self.out_dir.name}-it{self.iteration}",
                "iterations": self.iteration,
                "train_seconds": round(self.elapsed, 1),
                "device": str(self.device),
            },
        )

    def _step(self, network: torch.nn.Module) -> float:
        batch = self.episodes.sample_batch(self.config.batch_size)
        for name in ("support_images", "support_masks", "query_images", "query_masks", "class_valid"):
            setattr(batch, name, getattr(batch, name).to(self.device))
        if self.config.low_res_fraction > 0 and random.random() < self.config.low_res_fraction:
            half_resolution(batch)
        elif self.config.fine_thin_only:
            thin_targets(batch, FINE_SCALE * InferenceConfig.fine_scale_thickness)
        flat_prior = None
        if self.config.prior_dropout > 0:  # no random draw otherwise: the recipes without it draw as before
            flat_prior = torch.rand(batch.support_images.shape[0]) < self.config.prior_dropout
            flat_prior = flat_prior.to(self.device)
        with training_autocast(self.device, self.config.cpu_bf16):
            if self.context.enabled:
                logits = network(batch.support_images, batch.support_masks, batch.query_images, flat_prior)
                loss = episode_loss(logits, batch, self.config.model.spatial_dims)
                tokens = None
            else:
                tokens, loss = embeddings_and_loss(self.model, batch, flat_prior)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if tokens is not None:
            _update_memory_bank(self.memory_bank, tokens.detach().float(), batch)
        return float(all_reduce_mean(loss.detach(), self.context))

    def _fit_schedule(self, first_iteration: int) -> None:
        """Set the run's length to the iterations this session's rate reaches in its time limit (at most the
        planned ones), so that the learning-rate decay ends with the time."""
        done = self.iteration - first_iteration
        spent = self.elapsed - self._resumed_at
        if done < self.config.log_every or spent <= 0 or self.time_limit is None:
            return
        reachable = self.iteration + done / spent * (self.time_limit - spent)
        agreed = int(all_reduce_mean(torch.tensor(reachable, dtype=torch.float64), self.context))
        self.config.iterations = max(self.iteration + 1, min(self._planned_iterations, agreed))

    def _out_of_time(self) -> bool:
        """The time limit, decided identically on every rank."""
        flag = torch.tensor(float(self.time_limit is not None and self.elapsed - self._resumed_at >= self.time_limit))
        return bool(all_reduce_mean(flag, self.context) > 0)

    def _checkpoint(self, name: str) -> Path:
        """Gather sampler states on all ranks, write on the main one."""
        states = self._episode_states()
        path = self.out_dir / name
        if self.context.is_main:
            self.save(name, states)
        return path

    def _log(self, writer: Any, record: dict[str, Any]) -> None:
        with open(self.out_dir / LOG_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        for key in ("loss", "lr"):
            writer.add_scalar(f"train/{key}", record[key], record["iteration"])

    def fit(self) -> TrainResult:
        from torch.utils.tensorboard import SummaryWriter

        self.out_dir.mkdir(parents=True, exist_ok=True)
        main = self.context.is_main
        network: torch.nn.Module = self.model
        if self.context.enabled:
            # self-attention blocks leave their (cross-attention) norm_kv unused: DDP must know
            network = DistributedDataParallel(self.model)
        writer = SummaryWriter(str(self.out_dir / "tensorboard")) if main else None
        bar = tqdm(
            total=self.config.iterations, initial=self.iteration, disable=not (main and self.show_progress),
            desc="train", dynamic_ncols=True,
        )
        self.model.train()
        start = time.perf_counter() - self.elapsed
        losses: list[float] = []
        first_iteration = self.iteration
        while self.iteration < self.config.iterations:
            losses.append(self._step(network))
            self.iteration += 1
            self.elapsed = time.perf_counter() - start
            if self.fit_schedule_to_time and self.iteration % self.config.log_every == 0:
                self._fit_schedule(first_iteration)
                bar.total = self.config.iterations
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            out_of_time = self._out_of_time()
            last = self.iteration == self.config.iterations or out_of_time
            if main and (self.iteration % self.config.log_every == 0 or last):
                recent = losses[-self.config.log_every :]
                self._log(writer, {
                    "iteration": self.iteration, "total": self.config.iterations, "loss": sum(recent) / len(recent),
                    "lr": self.scheduler.get_last_lr()[0], "elapsed": round(self.elapsed, 2),
                })
            if self.iteration % self.config.checkpoint_every == 0 or out_of_time:
                self._checkpoint(LAST_CHECKPOINT)
            if out_of_time:
                break
        bar.close()
        self._checkpoint(LAST_CHECKPOINT)
        checkpoint = self._checkpoint(FINAL_CHECKPOINT)
        if writer is not None:
            writer.close()
        return TrainResult(checkpoint, self.iteration, losses[-1] if losses else float("nan"), self.elapsed)


def _check_same_recipe(stored: dict[str, Any], asked: dict[str, Any], path: Path) -> None:
    """Refuse to continue a run with another recipe than the one it was trained with (a run spanning sessions
    is continued by repeating its command); fields an older checkpoint lacks are not compared."""
    changed = [
        f"{name} {stored[name]!r} -> {asked[name]!r}"
        for name in sorted(set(stored) & set(asked) - PER_INVOCATION_FIELDS)
        if stored[name] != asked[name]
    ]
    if changed:
        raise IrisInputError(
            f"{path} was trained with another recipe ({'; '.join(changed)}): resume with the run's own arguments "
            "(only its length, threads and bfloat16 use may change), or start a new run folder"
        )


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    data = asdict(config)
    data["model"] = config.model.to_dict()
    return data
