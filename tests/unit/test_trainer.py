"""Trainer: learning-rate schedule, exact resume, logs, memory bank, DDP (gloo, 2 processes)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from iris_engine.checkpoint import load_checkpoint
from iris_engine.config import ModelConfig, TrainConfig
from iris_engine.data.toy import ToyEpisodes
from iris_engine.errors import IrisInputError
from iris_engine.input_scale import structure_thickness
from iris_engine.training import run as run_module
from iris_engine.training import trainer as trainer_module
from iris_engine.training.trainer import (
    FINAL_CHECKPOINT,
    LAST_CHECKPOINT,
    LOG_FILE,
    Trainer,
    half_resolution,
    lr_factor,
    thin_targets,
    training_autocast,
)

TINY = ModelConfig(
    encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
    task_encoder_layers=1, decoder_layers=1, num_query_tokens=4,
)


def train_config(**overrides) -> TrainConfig:
    values = dict(
        iterations=6, batch_size=2, lr=3e-3, warmup_iterations=2, checkpoint_every=3, log_every=1,
        num_threads=1, seed=5, model=TINY,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_lr_factor_warmup_and_decay():
    config = TrainConfig(iterations=110, warmup_iterations=10, min_lr_ratio=0.05)
    assert [lr_factor(i, config) for i in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(10, config) == pytest.approx(1.0)  # decay starts at the peak
    assert lr_factor(60, config) == pytest.approx(math.sqrt(0.05))  # geometric midpoint
    assert lr_factor(110, config) == pytest.approx(0.05)
    assert lr_factor(500, config) == pytest.approx(0.05)  # never below the floor
    factors = [lr_factor(i, config) for i in range(10, 111)]
    assert all(a > b for a, b in zip(factors, factors[1:], strict=False))
    no_warmup = TrainConfig(iterations=10, warmup_iterations=0, min_lr_ratio=0.1)
    assert lr_factor(0, no_warmup) == pytest.approx(1.0)
    assert lr_factor(10, no_warmup) == pytest.approx(0.1)


class Crash(Exception):
    pass


class CrashingEpisodes(ToyEpisodes):
    """Simulates a killed run: fails when asked for batch number `crash_at` (0-based)."""

    def __init__(self, crash_at: int, **kwargs):
        super().__init__(**kwargs)
        self.crash_at = crash_at
        self.calls = 0

    def sample_batch(self, batch_size: int):
        if self.calls == self.crash_at:
            raise Crash
        self.calls += 1
        return super().sample_batch(batch_size)


def test_straight_run_equals_crash_and_resume(tmp_path):
    config = train_config()
    straight = Trainer(config, ToyEpisodes(seed=11), tmp_path / "straight", show_progress=False)
    result = straight.fit()
    assert result.iterations == 6
    assert result.checkpoint == tmp_path / "straight" / FINAL_CHECKPOINT
    assert math.isfinite(result.final_loss)

    first = Trainer(config, CrashingEpisodes(3, seed=11), tmp_path / "resumed", show_progress=False)
    with pytest.raises(Crash):
        first.fit()
    assert (tmp_path / "resumed" / LAST_CHECKPOINT).is_file()  # written at checkpoint_every=3
    assert not (tmp_path / "resumed" / FINAL_CHECKPOINT).exists()

    second = Trainer(config, ToyEpisodes(seed=999), tmp_path / "resumed", show_progress=False)
    assert second.resume()
    assert second.iteration == 3
    second.fit()
    assert second.iteration == 6

    for name, tensor in straight.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[name], tensor, atol=1e-6, rtol=0, msg=name)
    assert straight.memory_bank.class_names == second.memory_bank.class_names
    for name in straight.memory_bank.class_names:
        torch.testing.assert_close(second.memory_bank.get(name).tokens, straight.memory_bank.get(name).tokens)
        assert second.memory_bank.count(name) == straight.memory_bank.count(name)
    assert second.optimizer.param_groups[0]["lr"] == pytest.approx(straight.optimizer.param_groups[0]["lr"])
    # the final checkpoints hold identical weights too
    a = load_checkpoint(tmp_path / "straight" / FINAL_CHECKPOINT).model.state_dict()
    b = load_checkpoint(tmp_path / "resumed" / FINAL_CHECKPOINT).model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)


def test_resume_without_checkpoint_returns_false(tmp_path):
    trainer = Trainer(train_config(), ToyEpisodes(), tmp_path, show_progress=False)
    assert not trainer.resume()
    assert trainer.iteration == 0


def test_resume_refuses_another_recipe_but_takes_another_length_or_threads(tmp_path):
    """A run spanning sessions is continued by repeating its command: a changed recipe is refused by name."""
    first = Trainer(train_config(), CrashingEpisodes(3, seed=11), tmp_path, show_progress=False)
    with pytest.raises(Crash):
        first.fit()
    other = Trainer(train_config(lr=1e-3, self_pair_fraction=0.3), ToyEpisodes(seed=11), tmp_path, show_progress=False)
    with pytest.raises(IrisInputError, match=r"lr 0\.003 -> 0\.001; self_pair_fraction 0\.0 -> 0\.3"):
        other.resume()
    assert other.iteration == 0
    longer = Trainer(train_config(iterations=9, num_threads=2, cpu_bf16=False), ToyEpisodes(seed=11), tmp_path,
                     show_progress=False)
    assert longer.resume() and longer.iteration == 3
    assert longer.fit().iterations == 9


def test_time_limit_counts_this_invocation_not_the_resumed_runs_past(tmp_path):
    """A run resumed after a long first session still trains: its time limit starts at the resume."""
    config = train_config(iterations=6, checkpoint_every=3)
    first = Trainer(config, CrashingEpisodes(3, seed=11), tmp_path, show_progress=False)
    with pytest.raises(Crash):
        first.fit()
    checkpoint = load_checkpoint(tmp_path / LAST_CHECKPOINT)
    state = {**checkpoint.training_state, "elapsed": 3600.0}  # an hour already spent before this session
    torch.save({**torch.load(tmp_path / LAST_CHECKPOINT, weights_only=False), "training_state": state},
               tmp_path / LAST_CHECKPOINT)
    resumed = Trainer(config, ToyEpisodes(seed=11), tmp_path, time_limit_minutes=10, show_progress=False)
    assert resumed.resume() and resumed.elapsed == pytest.approx(3600.0)
    assert resumed.fit().iterations == 6


def test_log_memory_bank_and_checkpoint_contents(tmp_path):
    config = train_config(iterations=4, batch_size=4, log_every=2, checkpoint_every=100)
    trainer = Trainer(config, ToyEpisodes(seed=1), tmp_path, show_progress=False)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 4]
    for record in records:
        assert math.isfinite(record["loss"]) and record["loss"] > 0
        assert record["total"] == 4 and record["lr"] > 0
    assert records[-1]["lr"] == pytest.approx(config.lr * config.min_lr_ratio)
    bank = trainer.memory_bank
    assert bank.class_names == ["toy/bright", "toy/dark"]
    # one EMA update per episode of that class: 4 iterations x 4 episodes
    assert bank.count("toy/bright") + bank.count("toy/dark") == 16
    assert bank.get("toy/bright").tokens.shape == (1, TINY.num_task_tokens, TINY.embed_dim)
    loaded = load_checkpoint(tmp_path / FINAL_CHECKPOINT, expected=TINY)
    assert loaded.memory_bank.class_names == ["toy/bright", "toy/dark"]
    assert loaded.metadata["iterations"] == 4
    assert loaded.training_state["iteration"] == 4
    assert loaded.training_state["train_config"]["model"] == TINY.to_dict()
    assert "optimizer" not in loaded.training_state  # what resume needs stays in last.pt, half the final file's size
    assert "optimizer" in load_checkpoint(tmp_path / LAST_CHECKPOINT).training_state
    assert (tmp_path / "tensorboard").is_dir()


def test_training_reduces_loss(tmp_path):
    config = train_config(iterations=40, batch_size=4, warmup_iterations=5, log_every=10, checkpoint_every=1000)
    Trainer(config, ToyEpisodes(seed=2), tmp_path, show_progress=False).fit()
    losses = [json.loads(line)["loss"] for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert len(losses) == 4
    assert losses[-1] < losses[0]


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist

    from iris_engine.config import ModelConfig, TrainConfig
    from iris_engine.data.toy import ToyEpisodes
    from iris_engine.training.trainer import Trainer

    out = Path(sys.argv[1])
    model = ModelConfig(encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
                        task_encoder_layers=1, decoder_layers=1, num_query_tokens=4)
    config = TrainConfig(iterations=3, batch_size=2, warmup_iterations=1, checkpoint_every=100, log_every=1,
                         num_threads=1, model=model)
    rank = int(__import__("os").environ["RANK"])
    trainer = Trainer(config, ToyEpisodes(seed=100 + rank), out / "run", show_progress=False)
    assert trainer.context.enabled and trainer.context.world_size == 2
    trainer.fit()
    torch.save(trainer.model.state_dict(), out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env["OMP_NUM_THREADS"] = "1"
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(tmp_path)],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    final = tmp_path / "run" / FINAL_CHECKPOINT
    assert final.is_file()
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    loaded = load_checkpoint(final).model.state_dict()
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), name
        assert torch.equal(tensor, loaded[name]), name
    records = [json.loads(line) for line in (tmp_path / "run" / LOG_FILE).read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3]  # only rank 0 logs


def test_half_resolution_averages_images_and_keeps_masks_binary():
    batch = ToyEpisodes(size=32, seed=2).sample_batch(3)
    images, masks = batch.query_images.clone(), batch.query_masks.clone()
    half_resolution(batch)
    assert batch.query_images.shape == (*images.shape[:3], 16, 16)
    assert batch.support_masks.shape[-2:] == (16, 16)
    assert torch.allclose(batch.query_images.mean(dim=(-1, -2)), images.mean(dim=(-1, -2)), atol=1e-5)
    assert set(batch.query_masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(batch.query_masks.mean(dim=(-1, -2)), masks.mean(dim=(-1, -2)), atol=0.1)


def test_thin_targets_turn_thick_classes_into_bands_and_keep_thin_ones():
    batch = ToyEpisodes(size=32, seed=2).sample_batch(2)
    batch.support_masks, batch.query_masks = torch.zeros(2, 1, 2, 32, 32), torch.zeros(2, 1, 2, 32, 32)
    batch.support_masks[:, :, 0, 4:28, 4:28] = 1.0  # thick in support and query
    batch.query_masks[:, :, 0, 6:30, 5:27] = 1.0
    batch.support_masks[:, :, 1, 16, 2:30] = 1.0  # a one-pixel line: thin already
    batch.query_masks[:, :, 1, 17, 2:30] = 1.0
    thin_line = batch.query_masks[:, :, 1].clone()
    thin_targets(batch, max_thickness=7.0)
    assert structure_thickness(batch.support_masks[0])[0] < 7.0
    assert torch.equal(batch.query_masks[:, :, 1], thin_line)
    band = batch.query_masks[0, 0, 0]
    assert band[6:30, 5:27].sum() == band.sum() > 0 and band[12:24, 12:20].sum() == 0  # the inner band of the query
    assert set(batch.query_masks.unique().tolist()) <= {0.0, 1.0}
    assert batch.synthetic == [True, True]  # band tasks name no structure: no memory-bank update
    thin_only = ToyEpisodes(size=32, seed=2).sample_batch(1)
    thin_only.support_masks, thin_only.query_masks = torch.zeros(1, 1, 2, 32, 32), torch.zeros(1, 1, 2, 32, 32)
    thin_only.support_masks[0, 0, 0, 16, 2:30] = 1.0  # a thin class beside an empty slot: nothing to change
    thin_targets(thin_only, max_thickness=7.0)
    assert thin_only.synthetic == [False]


def test_thin_full_size_batches_train(tmp_path):
    result = Trainer(train_config(iterations=3, low_res_fraction=0.5, fine_thin_only=True), ToyEpisodes(seed=1),
                     tmp_path, show_progress=False).fit()
    assert result.iterations == 3 and math.isfinite(result.final_loss)


def test_prior_dropout_segments_the_chosen_episodes_without_the_mask_prior(tmp_path):
    """The same first step with and without prior dropout: the loss differs (the flattened prior is what the
    decoder reads); a whole run with it trains."""
    v2 = replace(TINY, similarity_path=True, prior_size=8, histogram_bins=8, region_grid=2)
    losses = []
    for share in (0.0, 1.0):
        torch.manual_seed(0)
        trainer = Trainer(train_config(model=v2, prior_dropout=share), ToyEpisodes(seed=1), tmp_path / str(share),
                          show_progress=False)
        losses.append(trainer._step(trainer.model))
    assert abs(losses[0] - losses[1]) > 1e-4
    result = Trainer(train_config(model=v2, iterations=3, prior_dropout=0.5), ToyEpisodes(seed=1), tmp_path / "run",
                     show_progress=False).fit()
    assert result.iterations == 3 and math.isfinite(result.final_loss)


def test_iris_train_refuses_prior_dropout_without_the_support_context(tmp_path):
    with pytest.raises(IrisInputError, match="prior-dropout"):
        run_module.main(["--out", str(tmp_path), "--prior-dropout", "0.5", "--no-similarity-path"])


def test_training_only_the_fine_class_path_leaves_every_other_weight_as_it_was(tmp_path):
    fine = replace(TINY, similarity_path=True, prior_size=8, histogram_bins=8, region_grid=2, fine_class_path=True)
    trainer = Trainer(train_config(model=fine, iterations=3, trainable="fine_class_path"), ToyEpisodes(seed=1),
                      tmp_path, show_progress=False)
    before = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    trainer.fit()
    changed = {name for name, value in trainer.model.state_dict().items() if not torch.equal(value, before[name])}
    assert changed and all(name.startswith(("decoder.fine_up.", "decoder.fine_projection.")) for name in changed)
    assert "decoder.fine_projection.weight" in changed


def test_training_only_the_fine_class_path_needs_that_path(tmp_path):
    with pytest.raises(IrisInputError, match="--fine-class-path"):
        train_config(trainable="fine_class_path")
    with pytest.raises(IrisInputError, match="one of"):
        train_config(trainable="encoder")
    with pytest.raises(SystemExit):
        run_module.main(["--out", str(tmp_path), "--train-only", "encoder"])


def test_low_resolution_batches_train_the_same_model(tmp_path):
    result = Trainer(train_config(iterations=3, low_res_fraction=1.0), ToyEpisodes(seed=1), tmp_path,
                     show_progress=False).fit()
    assert result.iterations == 3 and math.isfinite(result.final_loss)


def test_the_schedule_is_fitted_to_the_time_limit(tmp_path):
    with pytest.raises(ValueError, match="time limit"):
        Trainer(train_config(), ToyEpisodes(seed=1), tmp_path, show_progress=False, fit_schedule_to_time=True)
    trainer = Trainer(train_config(iterations=1000, log_every=10), ToyEpisodes(seed=1), tmp_path,
                      time_limit_minutes=1.0, show_progress=False, fit_schedule_to_time=True)
    trainer.iteration, trainer.elapsed = 50, 15.0  # 50 iterations in 15 s: 150 more fit in the remaining 45 s
    trainer._fit_schedule(first_iteration=0)
    assert trainer.config.iterations == 200
    trainer.elapsed = 5.0  # faster than it looked: lengthened again, but never past the planned 1000
    trainer._fit_schedule(first_iteration=0)
    assert trainer.config.iterations == 600
    trainer.iteration, trainer.elapsed = 500, 1.0
    trainer._fit_schedule(first_iteration=0)
    assert trainer.config.iterations == 1000
    trainer.iteration, trainer.elapsed = 60, 59.999  # a long step must not end the run before this iteration
    trainer._fit_schedule(first_iteration=0)
    assert trainer.config.iterations == 61


@pytest.mark.parametrize(("native", "switch", "expected"), [(True, True, True), (True, False, False),
                                                           (False, True, False)])
def test_cpu_training_runs_under_bf16_autocast_only_where_the_cpu_has_it(monkeypatch, native, switch, expected):
    monkeypatch.setattr(trainer_module, "native_bf16", lambda: native)
    with training_autocast(torch.device("cpu"), switch):
        assert torch.is_autocast_enabled("cpu") is expected
        if expected:
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_a_bf16_training_step_keeps_float32_weights_and_the_float32_loss(monkeypatch, tmp_path):
    monkeypatch.setattr(trainer_module, "native_bf16", lambda: True)
    losses = {}
    for switch in (True, False):
        trainer = Trainer(train_config(iterations=1, cpu_bf16=switch), ToyEpisodes(seed=3), tmp_path / str(switch),
                          show_progress=False)
        losses[switch] = trainer.fit().final_loss
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert math.isfinite(losses[True])
    assert losses[True] == pytest.approx(losses[False], abs=0.02)
    assert losses[True] != losses[False]  # the first step really ran in bfloat16


def test_iris_train_takes_bf16_on_the_cpu_unless_told_otherwise():
    from iris_engine.training.run import build_parser, train_config

    assert train_config(build_parser().parse_args([]), 128).cpu_bf16
    assert not train_config(build_parser().parse_args(["--no-cpu-bf16"]), 128).cpu_bf16


def test_a_run_stopped_by_its_time_limit_logs_its_last_iteration(tmp_path):
    config = train_config(iterations=50, log_every=25)
    result = Trainer(config, ToyEpisodes(seed=4), tmp_path, time_limit_minutes=1e-6, show_progress=False).fit()
    records = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert result.iterations == 1
    assert [r["iteration"] for r in records] == [1]


def _trained_checkpoint(out: Path) -> Path:
    """A two-iteration run of the TINY model; its final checkpoint."""
    Trainer(train_config(iterations=2), ToyEpisodes(seed=1), out, show_progress=False).fit()
    return out / FINAL_CHECKPOINT


def test_a_warm_start_takes_every_weight_of_the_same_architecture(tmp_path):
    source = _trained_checkpoint(tmp_path / "source")
    trainer = Trainer(train_config(iterations=2), ToyEpisodes(seed=2), tmp_path / "warm", show_progress=False)
    taken = trainer.initialise_from(source)
    state = load_checkpoint(source).model.state_dict()
    assert taken == len(state)
    assert all(torch.equal(value, state[name]) for name, value in trainer.model.state_dict().items())


def test_a_wider_decoder_starts_anew_from_the_narrower_models_encoder(tmp_path):
    """`--decoder-channels`: what keeps its shape (encoder, task encoding, attention) is taken, the full-size path
    of the wider decoder keeps its fresh weights, and the result trains."""
    source = _trained_checkpoint(tmp_path / "source")
    state = load_checkpoint(source).model.state_dict()
    wide = train_config(iterations=2, model=replace(TINY, decoder_channels=16))
    trainer = Trainer(wide, ToyEpisodes(seed=2), tmp_path / "wide", show_progress=False)
    fresh = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    taken = trainer.initialise_from(source)
    after = trainer.model.state_dict()
    assert 0 < taken < len(state)
    assert all(torch.equal(after[name], value) for name, value in state.items() if name.startswith("encoder."))
    assert after["decoder.pixel_projection.weight"].shape[0] == 16
    assert torch.equal(after["decoder.pixel_projection.weight"], fresh["decoder.pixel_projection.weight"])
    result = trainer.fit()
    assert result.iterations == 2 and math.isfinite(result.final_loss)


def test_iris_train_sets_and_checks_the_decoder_width():
    args = run_module.build_parser().parse_args(["--decoder-channels", "32"])
    assert run_module.train_config(args, 128).model.decoder_channels == 32
    with pytest.raises(IrisInputError, match="decoder-channels"):
        run_module.train_config(run_module.build_parser().parse_args(["--decoder-channels", "0"]), 128)
