"""Click refiner: input maps, identity at initialisation, safe weight files, model-version matching, training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from iris_engine.checkpoint import (
    CLICK_REFINER_FILE,
    FINE_CLICK_REFINER_FILE,
    load_click_refiner,
    save_checkpoint,
    save_click_refiner,
)
from iris_engine.config import ModelConfig
from iris_engine.data.splits import make_split
from iris_engine.data.toy import ToyEpisodes
from iris_engine.errors import CheckpointError
from iris_engine.inference import IrisSegmenter
from iris_engine.model.click_refiner import NEGATIVE, POSITIVE, ClickRefiner, ClickRefinerConfig, click_inputs, widen
from iris_engine.model.iris import IrisModel
from iris_engine.refinement import (
    ClickTuner,
    LearnedClicks,
    QueryFeatures,
    RefineConfig,
    clicks_to_grid,
    honour,
    local_edit,
    refine_slab,
)
from iris_engine.strategies import encode_supports
from iris_engine.thin_clicks import drop_halo
from iris_engine.training import click_training
from iris_engine.training.click_training import (
    ClickTrainConfig,
    ClickTrainer,
    ThinTargets,
    blend_local_edit,
    degrade_starts,
    grow_starts,
    one_shot_batch,
    simulate_clicks,
)
from tests.unit.test_data_msd_split_bank import _write_msd

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)
SMALL_REFINER = ClickRefinerConfig(channels=(8, 16), feature_channels=8)


def _two_regions(size: int = 32) -> torch.Tensor:
    image = torch.zeros(1, 1, size, size)
    image[..., : size // 2] = 1.0
    return image


def test_click_inputs_encode_where_and_what_was_clicked() -> None:
    image = _two_regions()
    features = torch.cat([image, 1 - image], dim=1).repeat(1, 4, 1, 1)  # two feature directions
    clicks = np.zeros((1, 32, 32), np.uint8)
    clicks[0, 10, 5] = POSITIVE
    maps = click_inputs(image, torch.full_like(image, 0.3), features, clicks, ClickRefinerConfig(feature_channels=8))
    near_pos, near_neg, far_pos, far_neg, feat_pos, feat_neg, int_pos, int_neg = maps[0, 3:11]
    assert near_pos[10, 5] == 1.0 and near_pos[10, 15] < 1e-3 and far_pos[10, 6] > far_pos[10, 20] > 0
    assert not near_neg.any() and not far_neg.any() and not feat_neg.any() and not int_neg.any()
    assert feat_pos[0, 0] == pytest.approx(1.0) and feat_pos[0, 31] == pytest.approx(0.0, abs=1e-6)
    assert int_pos[5, 3] == pytest.approx(1.0) and int_pos[5, 30] < 0.2
    assert maps.shape == (1, 11 + 8, 32, 32) and torch.allclose(maps[0, 1], torch.full((32, 32), 0.3))
    similarity_only = ClickRefinerConfig(feature_channels=8, pixel_features=False)
    lean = click_inputs(image, torch.full_like(image, 0.3), features, clicks, similarity_only)
    assert lean.shape == (1, 11, 32, 32) and torch.equal(lean, maps[:, :11])
    assert ClickRefiner(similarity_only)(lean).shape == (1, 1, 32, 32)


def test_an_untrained_refiner_returns_the_prediction() -> None:
    image = _two_regions()
    start = torch.rand(2, 1, 32, 32).clamp(0.01, 0.99)
    clicks = np.zeros((2, 32, 32), np.uint8)
    clicks[:, 3, 3] = NEGATIVE
    refiner = ClickRefiner(SMALL_REFINER)
    logits = refiner(click_inputs(image.repeat(2, 1, 1, 1), start, torch.randn(2, 8, 32, 32), clicks, refiner.config))
    assert torch.allclose(torch.sigmoid(logits), start, atol=1e-5)


def test_refiner_files_round_trip_and_refuse_tampering(tmp_path: Path) -> None:
    refiner = ClickRefiner(SMALL_REFINER)
    torch.nn.init.normal_(refiner.head.weight)
    path = save_click_refiner(tmp_path / CLICK_REFINER_FILE, refiner, "model-v1", {"iterations": 3})
    loaded = load_click_refiner(path)
    assert loaded.iris_model_version == "model-v1" and loaded.metadata["iterations"] == 3
    assert loaded.refiner.config == SMALL_REFINER
    assert torch.equal(loaded.refiner.head.weight, refiner.head.weight)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["head.bias"] += 1.0
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="integrity"):
        load_click_refiner(tmp_path / "tampered.pt")
    save_checkpoint(tmp_path / "model.pt", IrisModel(TINY))
    with pytest.raises(CheckpointError, match="not a click refiner"):
        load_click_refiner(tmp_path / "model.pt")


def test_the_segmenter_takes_the_refiner_beside_its_weights_only_for_its_model_version(tmp_path: Path) -> None:
    checkpoint = save_checkpoint(tmp_path / "iris.pt", IrisModel(TINY), metadata={"model_version": "tiny-1"})
    assert IrisSegmenter.from_checkpoint(checkpoint).click_refiner is None
    save_click_refiner(tmp_path / CLICK_REFINER_FILE, ClickRefiner(SMALL_REFINER), "tiny-1")
    assert IrisSegmenter.from_checkpoint(checkpoint).click_refiner is not None
    save_click_refiner(tmp_path / CLICK_REFINER_FILE, ClickRefiner(SMALL_REFINER), "another-model")
    with pytest.warns(UserWarning, match="trained for model another-model"):
        assert IrisSegmenter.from_checkpoint(checkpoint).click_refiner is None


def test_the_segmenter_takes_the_fine_refiner_beside_its_weights_for_its_model_version(tmp_path: Path) -> None:
    checkpoint = save_checkpoint(tmp_path / "iris.pt", IrisModel(TINY), metadata={"model_version": "tiny-1"})
    save_click_refiner(tmp_path / CLICK_REFINER_FILE, ClickRefiner(SMALL_REFINER), "tiny-1")
    assert IrisSegmenter.from_checkpoint(checkpoint).fine_click_refiner is None
    save_click_refiner(tmp_path / FINE_CLICK_REFINER_FILE, ClickRefiner(SMALL_REFINER), "tiny-1")
    segmenter = IrisSegmenter.from_checkpoint(checkpoint)
    assert segmenter.fine_click_refiner is not None and segmenter.fine_click_refiner is not segmenter.click_refiner
    save_click_refiner(tmp_path / FINE_CLICK_REFINER_FILE, ClickRefiner(SMALL_REFINER), "another-model")
    with pytest.warns(UserWarning, match="click_refiner_fine.pt was trained for model another-model"):
        assert IrisSegmenter.from_checkpoint(checkpoint).fine_click_refiner is None


def test_learned_refinement_works_at_the_image_resolution_and_needs_a_refiner() -> None:
    torch.manual_seed(0)
    model = IrisModel(TINY).eval()
    image = np.random.default_rng(0).normal(size=(64, 48)).astype(np.float32)
    queries = torch.nn.functional.interpolate(torch.from_numpy(image)[None, None], size=(32, 32), mode="bilinear")
    probability = np.zeros((64, 48, 1), np.float32)
    probability[10:30, 10:30] = 0.9
    clicks = np.zeros((64, 48, 1), np.uint8)
    clicks[40, 40, 0] = POSITIVE
    assert clicks_to_grid(clicks, 32)[0, 20, 27] == POSITIVE
    learned = LearnedClicks(ClickRefiner(SMALL_REFINER), QueryFeatures(model, queries))
    alone = RefineConfig(method="learned", learned_weight=1.0)
    out = refine_slab(image[..., None], probability, clicks, alone, learned=learned)
    unchanged = np.ones((64, 48, 1), bool)
    unchanged[40, 40] = False
    assert np.allclose(out[unchanged], probability[unchanged], atol=1e-4) and out[40, 40, 0] >= 0.5
    local = refine_slab(image[..., None], probability, clicks, RefineConfig(method="local"))
    blended = refine_slab(image[..., None], probability, clicks, RefineConfig(method="learned"), learned=learned)
    assert np.allclose(blended[unchanged], 0.5 * (out + local)[unchanged], atol=1e-4)
    with pytest.raises(Exception, match="needs click refiner weights"):
        refine_slab(image[..., None], probability, clicks, RefineConfig(method="learned"))


def test_learned_tuning_adds_the_tuned_prediction_from_the_second_click() -> None:
    torch.manual_seed(0)
    model = IrisModel(TINY).eval()
    image = np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32)
    queries = torch.from_numpy(image)[None, None]
    probability = np.full((32, 32, 1), 0.2, np.float32)
    probability[8:20, 8:20] = 0.9
    support_mask = torch.from_numpy((probability[..., 0] > 0.5).astype(np.float32))[None, None]
    tokens = encode_supports(model, queries, support_mask).tokens
    with_tuning = RefineConfig(learned_tuning=True)
    features = QueryFeatures(model, queries)
    tuner = ClickTuner(features, tokens, with_tuning)
    learned = LearnedClicks(ClickRefiner(SMALL_REFINER), features)
    clicks = np.zeros((32, 32, 1), np.uint8)
    clicks[25, 25, 0] = POSITIVE

    def refined(config: RefineConfig) -> np.ndarray:
        return refine_slab(image[..., None], probability, clicks, config, tuner, learned=learned)

    default = RefineConfig()
    assert not default.learned_tuning
    assert np.array_equal(refined(with_tuning), refined(default))  # one click: refiner + local edit
    clicks[10, 10, 0] = NEGATIVE
    alone = refined(RefineConfig(learned_weight=1.0))
    combined = refined(RefineConfig(method="combined"))
    local = refined(RefineConfig(method="local"))
    unclicked = clicks == 0
    assert np.allclose(refined(with_tuning)[unclicked], 0.5 * (alone + combined)[unclicked], atol=1e-5)
    assert np.allclose(refined(default)[unclicked], 0.5 * (alone + local)[unclicked], atol=1e-5)
    assert not np.allclose(refined(with_tuning), refined(default), atol=1e-3)


def test_thin_structures_get_the_halo_step_and_the_local_edit_with_a_lighter_refiner_weight() -> None:
    torch.manual_seed(0)
    model = IrisModel(TINY).eval()
    image = np.random.default_rng(0).normal(size=(128, 128)).astype(np.float32)
    queries = torch.nn.functional.interpolate(torch.from_numpy(image)[None, None], size=(32, 32), mode="bilinear")
    vessels = np.full((128, 128, 1), 0.1, np.float32)
    vessels[10:120:18, 4:124] = 0.9  # six one-pixel lines: thin and elongated
    blob = np.full((128, 128, 1), 0.1, np.float32)
    blob[30:90, 30:90] = 0.9
    support_mask = torch.from_numpy((blob[::4, ::4, 0] > 0.5).astype(np.float32))[None, None]
    features = QueryFeatures(model, queries)
    tuner = ClickTuner(features, encode_supports(model, queries, support_mask).tokens, RefineConfig())
    learned = LearnedClicks(ClickRefiner(SMALL_REFINER), features)
    clicks = np.zeros((128, 128, 1), np.uint8)
    clicks[14, 60, 0], clicks[50, 8, 0] = POSITIVE, NEGATIVE
    local_only = RefineConfig(thin_learned_weight=0.0)
    for start, thin in ((vessels, True), (blob, False)):
        default = refine_slab(image[..., None], start, clicks, local_only, tuner, learned=learned)
        without_ridges = refine_slab(image[..., None], start, clicks, replace(local_only, thin_keep=1.0), tuner,
                                     learned=learned)
        local = refine_slab(image[..., None], start, clicks, RefineConfig(method="local"))
        halo_dropped = drop_halo(image, start[..., 0], clicks[..., 0], RefineConfig().thin_keep, 0.5)[..., None]
        local_after_drop = refine_slab(image[..., None], halo_dropped, clicks, RefineConfig(method="local"))
        assert np.array_equal(without_ridges, local) == thin and not np.array_equal(default, local)
        assert np.array_equal(default, local_after_drop) == thin  # thin: the negative click drops the halo first
    refined = learned.refine(vessels[:, :, [0]], clicks, [0])
    blended = refine_slab(image[..., None], vessels, clicks, RefineConfig(), tuner, learned=learned)
    halo_dropped = drop_halo(image, vessels[..., 0], clicks[..., 0], RefineConfig().thin_keep, 0.5)[..., None]
    local_after_drop = refine_slab(image[..., None], halo_dropped, clicks, RefineConfig(method="local"))
    weight = RefineConfig().thin_learned_weight
    expected = honour(weight * refined + (1 - weight) * local_after_drop, clicks, 0.5)  # default: the refiner weighs in
    assert np.allclose(blended, expected, atol=1e-6)


def test_click_training_resumes_exactly_and_clicks_land_on_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = IrisModel(TINY).eval()
    config = ClickTrainConfig(iterations=4, batch_size=2, warmup_iterations=1, checkpoint_every=2, max_clicks=3,
                              degraded_start_fraction=0.5)
    torch.manual_seed(1)
    straight = ClickTrainer(model, ToyEpisodes(size=32, seed=3), config, tmp_path / "a", SMALL_REFINER)
    straight.fit()
    torch.manual_seed(1)
    first = ClickTrainer(model, ToyEpisodes(size=32, seed=3), config, tmp_path / "b", SMALL_REFINER)
    first.fit(time_limit_minutes=0.0)  # stops after one iteration, keeping its state
    assert first.iteration == 1
    second = ClickTrainer(model, ToyEpisodes(size=32, seed=99), config, tmp_path / "b", SMALL_REFINER)
    assert second.resume() and second.iteration == 1
    second.fit()
    for a, b in zip(straight.refiner.parameters(), second.refiner.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    batch = one_shot_batch(model, ToyEpisodes(size=32, seed=5), 3)
    clicks = simulate_clicks(straight.refiner, batch, np.array([1, 2, 3]), 0.5)
    truth = batch.truth[:, 0].numpy() >= 0.5
    start = batch.start[:, 0].numpy() >= 0.5
    assert all(0 < (clicks[i] > 0).sum() <= i + 1 for i in range(3))
    for r, c in np.argwhere(clicks[0] > 0):
        assert truth[0, r, c] != start[0, r, c]  # the first click goes to an error of the one-shot result
        assert (clicks[0, r, c] == POSITIVE) == truth[0, r, c]


def test_local_blend_trains_the_output_that_learned_refinement_returns(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = IrisModel(TINY).eval()
    batch = one_shot_batch(model, ToyEpisodes(size=32, seed=5), 2)
    refiner = ClickRefiner(SMALL_REFINER).eval()  # untrained: returns the start unchanged
    clicks = np.zeros((2, 32, 32), np.uint8)
    clicks[0, 5, 5], clicks[0, 20, 20] = POSITIVE, NEGATIVE  # the second slice has no clicks
    with torch.no_grad():
        refined = torch.sigmoid(refiner(click_inputs(batch.image, batch.start, batch.features, clicks,
                                                     refiner.config)))
    assert torch.equal(blend_local_edit(refined, batch, clicks, 0.0), refined)
    blended = blend_local_edit(refined, batch, clicks, 0.5)
    image, start = batch.image[0, 0].numpy(), batch.start[0, 0].numpy()
    edited = local_edit(image[..., None], start[..., None], clicks[0][..., None], RefineConfig())[..., 0]
    assert np.allclose(blended[0, 0].numpy(), 0.5 * refined[0, 0].numpy() + 0.5 * edited, atol=1e-5)
    assert np.allclose(blended[1], refined[1], atol=1e-6)  # no clicks, no local edit
    assert blended[0, 0, 5, 5] > refined[0, 0, 5, 5] and blended[0, 0, 20, 20] < refined[0, 0, 20, 20]
    config = ClickTrainConfig(iterations=2, batch_size=2, warmup_iterations=1, max_clicks=3, local_blend=0.5)
    trainer = ClickTrainer(model, ToyEpisodes(size=32, seed=3), config, tmp_path, SMALL_REFINER)
    trainer.fit()
    assert trainer.iteration == 2 and any(p.abs().sum() > 0 for p in trainer.refiner.head.parameters())
    with pytest.raises(ValueError, match="--local-blend must lie in"):
        click_training.main(["--local-blend", "1.0"])


def test_a_bf16_refiner_step_keeps_float32_weights_and_a_float32_close_loss(monkeypatch, tmp_path: Path) -> None:
    from iris_engine.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "native_bf16", lambda: True)
    model = IrisModel(TINY).eval()
    losses = {}
    for switch in (True, False):
        torch.manual_seed(2)
        config = ClickTrainConfig(iterations=1, batch_size=2, warmup_iterations=1, max_clicks=2, cpu_bf16=switch)
        trainer = ClickTrainer(model, ToyEpisodes(size=32, seed=3), config, tmp_path / str(switch), SMALL_REFINER)
        losses[switch] = trainer.step()
        assert all(p.dtype == torch.float32 for p in trainer.refiner.parameters())
    assert np.isfinite(losses[True])
    assert losses[True] == pytest.approx(losses[False], abs=0.02)
    assert losses[True] != losses[False]  # the step really ran in bfloat16
    assert click_training.build_parser().parse_args([]).cpu_bf16
    assert not click_training.build_parser().parse_args(["--no-cpu-bf16"]).cpu_bf16


def test_grown_starts_hold_the_truth_inside_a_wider_confident_blob() -> None:
    truth = torch.zeros(3, 1, 32, 32)
    truth[:2, 0, 12:16, 12:16] = 1.0  # the third slice shows nothing: left as it is
    start = torch.full((3, 1, 32, 32), 0.05)
    start[0, 0, 0:2, 0:2] = 0.8
    rng = np.random.default_rng(0)
    assert torch.equal(grow_starts(start, truth, rng, 0.0, (0.1, 0.2)), start)
    grown = grow_starts(start, truth, rng, 1.0, (0.1, 0.2))
    for i in range(2):
        blob = grown[i, 0] >= 0.5
        band = (3.2, 6.4)  # 0.1 and 0.2 of the side: a 4 x 4 square grown by r covers about 16 + 16 r + pi r^2
        assert blob[truth[i, 0] > 0].all()
        assert 16 + 16 * band[0] <= int(blob.sum()) <= 16 + 16 * band[1] + np.pi * band[1] ** 2
        assert not blob[truth[i, 0] == 0].all()
    assert torch.equal(grown[0, 0, 0:2, 0:2], start[0, 0, 0:2, 0:2])  # the start's own confident pixels stay
    assert torch.equal(grown[2], start[2])
    with pytest.raises(ValueError, match="--grown-start-fraction must lie in"):
        click_training.main(["--grown-start-fraction", "1.5"])


def test_degraded_starts_are_emptied_or_another_slices_prediction() -> None:
    start = torch.stack([torch.full((1, 4, 4), value) for value in np.linspace(0.1, 0.9, 8)])
    rng = np.random.default_rng(0)
    assert torch.equal(degrade_starts(start, rng, 0.0, 0.01), start)
    degraded = degrade_starts(start, rng, 1.0, 0.01)
    values = {round(float(v), 4) for v in degraded[:, 0, 0, 0]}
    emptied = sum(torch.allclose(d, torch.full_like(d, 0.01)) for d in degraded)
    swapped = sum(torch.equal(degraded[i], start[(i + 1) % 8]) for i in range(8))
    assert emptied + swapped == 8 and emptied > 0 and swapped > 0
    assert values <= {0.01} | {round(float(v), 4) for v in start[:, 0, 0, 0]}
    assert torch.equal(start[:, 0, 0, 0], torch.tensor(np.linspace(0.1, 0.9, 8), dtype=start.dtype))  # untouched


def test_merged_starts_unite_a_slices_prediction_with_the_next_ones() -> None:
    start = torch.zeros(4, 1, 4, 4)
    for i in range(4):
        start[i, 0, i, :] = 0.9  # each slice predicts its own row
    merged = degrade_starts(start, np.random.default_rng(0), 0.0, 0.01, merged_fraction=1.0)
    for i in range(4):
        assert torch.equal(merged[i], torch.maximum(start[i], start[(i + 1) % 4]))
    assert torch.equal(degrade_starts(start[:1], np.random.default_rng(0), 0.0, 0.01, merged_fraction=1.0), start[:1])
    with pytest.raises(ValueError, match="sum to at most 1"):
        click_training.main(["--degraded-start-fraction", "0.6", "--merged-start-fraction", "0.5"])


def test_train_refiner_command_writes_a_refiner_for_the_model_it_read(tmp_path: Path) -> None:
    _write_msd(tmp_path, "toy2d", 6, False, {"disc": 1}, seed=1)
    split = make_split(0, held_out_fraction=0.5, held_out_datasets=(), held_out_classes=(), datasets=("toy2d",),
                       root=tmp_path)
    split.save(tmp_path / "split.json")
    checkpoint = save_checkpoint(tmp_path / "iris.pt", IrisModel(TINY), metadata={"model_version": "tiny-2"})
    out = tmp_path / "run"
    path = click_training.main(["--checkpoint", str(checkpoint), "--data-root", str(tmp_path), "--datasets", "toy2d",
                                "--out", str(out), "--iterations", "2", "--batch-size", "2"])
    loaded = load_click_refiner(path)
    assert loaded.iris_model_version == "tiny-2" and loaded.metadata["iterations"] == 2
    assert loaded.refiner.config.feature_channels == TINY.decoder_channels
    assert json.loads((out / "refiner_log.jsonl").read_text().splitlines()[-1])["iteration"] == 2
    assert click_training.main(["--checkpoint", str(checkpoint), "--data-root", str(tmp_path), "--datasets", "toy2d",
                                "--out", str(out), "--iterations", "3", "--batch-size", "2", "--resume"]) == path
    assert load_click_refiner(path).metadata["iterations"] == 3
    common = ["--checkpoint", str(checkpoint), "--data-root", str(tmp_path), "--datasets", "toy2d", "--iterations",
              "1", "--batch-size", "2", "--init", str(path)]
    wide = click_training.main([*common, "--out", str(tmp_path / "wide"), "--channels", "24", "40", "56", "72"])
    assert load_click_refiner(wide).refiner.config.channels == (24, 40, 56, 72)
    again = click_training.main([*common[:-1], str(wide), "--out", str(tmp_path / "again")])
    assert load_click_refiner(again).refiner.config.channels == (24, 40, 56, 72)
    with pytest.raises(ValueError, match="cannot widen"):
        click_training.main([*common[:-1], str(wide), "--out", str(tmp_path / "narrow"), "--channels", "16", "32",
                             "48", "64"])


def test_thin_targets_turn_thick_classes_into_bands_and_keep_thin_ones() -> None:
    thick = torch.zeros(64, 64)
    thick[16:48, 16:48] = 1
    thin = torch.zeros(64, 64)
    thin[8:56, 30:33] = 1  # 3 px wide at 64 px: below the fine limit of 7

    class Source:
        def sample_batch(self, batch_size: int) -> SimpleNamespace:
            masks = torch.stack([thick, thin])[:, None, None].repeat(1, 2, 1, 1, 1)  # (B, N, K=1, H, W)
            return SimpleNamespace(support_masks=masks.clone(), query_masks=masks.clone(), synthetic=None)

    batch = ThinTargets(Source()).sample_batch(2)
    band = batch.query_masks[0, 0, 0] > 0.5
    assert band.sum() < thick.sum() / 4 and bool((band <= (thick > 0.5)).all()) and not band[32, 32]
    assert torch.equal(batch.support_masks[0, 0, 0], batch.query_masks[0, 0, 0])
    assert torch.equal(batch.query_masks[1, 0, 0], thin) and batch.synthetic == [True, False]


def test_fine_thin_only_trains_at_twice_the_input_size_and_saves_the_fine_refiner(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from iris_engine.data.slices import build_slice_bank

    _write_msd(tmp_path, "toy2d", 6, False, {"disc": 1}, seed=1)
    split = make_split(0, held_out_fraction=0.5, held_out_datasets=(), held_out_classes=(), datasets=("toy2d",),
                       root=tmp_path)
    split.save(tmp_path / "split.json")
    build_slice_bank(("toy2d",), root=tmp_path, size=32, cache_dir=None).save(tmp_path / "bank32.npz")
    checkpoint = save_checkpoint(tmp_path / "iris.pt", IrisModel(TINY), metadata={"model_version": "tiny-4"})
    thinned: list[tuple[int, float]] = []
    real = click_training.thin_targets
    monkeypatch.setattr(click_training, "thin_targets",
                        lambda batch, limit: thinned.append((batch.query_masks.shape[-1], limit)) or real(batch, limit))
    common = ["--checkpoint", str(checkpoint), "--data-root", str(tmp_path), "--datasets", "toy2d", "--out",
              str(tmp_path / "fine"), "--iterations", "1", "--batch-size", "2", "--fine-thin-only"]
    with pytest.raises(ValueError, match="32 px slices, the refiner trains at 64"):
        click_training.main([*common, "--bank", str(tmp_path / "bank32.npz")])
    path = click_training.main(common)
    assert path.name == FINE_CLICK_REFINER_FILE
    assert load_click_refiner(path).metadata["recipe"]["fine_thin_only"]
    assert thinned and set(thinned) == {(64, 7.0)}  # 64 px episodes, the fine limit 2 x 3.5 model-grid pixels


def test_train_refiner_runs_from_a_saved_bank_in_worker_processes(tmp_path: Path) -> None:
    from iris_engine.data.slices import build_slice_bank

    _write_msd(tmp_path, "toy2d", 6, False, {"disc": 1}, seed=1)
    split = make_split(0, held_out_fraction=0.5, held_out_datasets=(), held_out_classes=(), datasets=("toy2d",),
                       root=tmp_path)
    split.save(tmp_path / "split.json")
    build_slice_bank(("toy2d",), root=tmp_path, size=32, cache_dir=None).save(tmp_path / "bank.npz", compact=True)
    build_slice_bank(("toy2d",), root=tmp_path, size=16, cache_dir=None).save(tmp_path / "bank16.npz")
    checkpoint = save_checkpoint(tmp_path / "iris.pt", IrisModel(TINY), metadata={"model_version": "tiny-3"})
    save_click_refiner(tmp_path / "old_refiner.pt", ClickRefiner(ClickRefinerConfig(feature_channels=8)), "tiny-2")
    common = ["--checkpoint", str(checkpoint), "--split", str(tmp_path / "split.json"), "--out", str(tmp_path / "r"),
              "--iterations", "2", "--batch-size", "2", "--device", "cpu"]
    with pytest.raises(ValueError, match="16 px slices, the refiner trains at 32"):
        click_training.main([*common, "--bank", str(tmp_path / "bank16.npz")])
    with pytest.raises(ValueError, match="trained for IRIS model tiny-2"):
        click_training.main([*common, "--bank", str(tmp_path / "bank.npz"), "--init", str(tmp_path / "old_refiner.pt")])
    path = click_training.main([*common, "--bank", str(tmp_path / "bank.npz"), "--loader-workers", "1",
                                "--init", str(tmp_path / "old_refiner.pt"), "--init-any-model"])
    loaded = load_click_refiner(path)
    assert loaded.iris_model_version == "tiny-3" and loaded.metadata["iterations"] == 2


def test_a_refiner_is_fine_tuned_only_from_one_trained_for_the_same_model(tmp_path: Path) -> None:
    model = IrisModel(TINY).eval()
    config = ClickTrainConfig(iterations=1, batch_size=2, warmup_iterations=1, max_clicks=2)
    torch.manual_seed(4)
    shipped = ClickRefiner(SMALL_REFINER)
    path = save_click_refiner(tmp_path / CLICK_REFINER_FILE, shipped, "tiny-2")
    trainer = ClickTrainer(model, ToyEpisodes(size=32, seed=3), config, tmp_path / "ft", SMALL_REFINER)
    trainer.initialise_from(path, "tiny-2")
    for a, b in zip(shipped.parameters(), trainer.refiner.parameters(), strict=True):
        assert torch.equal(a, b)
    trainer.fit()
    assert any(not torch.equal(a, b) for a, b in zip(shipped.parameters(), trainer.refiner.parameters(), strict=True))
    with pytest.raises(ValueError, match="trained for IRIS model tiny-2"):
        trainer.initialise_from(path, "tiny-3")
    retrained = ClickTrainer(model, ToyEpisodes(size=32, seed=3), config, tmp_path / "ft3", SMALL_REFINER)
    retrained.initialise_from(path, "tiny-3", any_model=True)  # a warm start after the IRIS model was retrained
    for a, b in zip(shipped.parameters(), retrained.refiner.parameters(), strict=True):
        assert torch.equal(a, b)
    other = ClickTrainer(model, ToyEpisodes(size=32, seed=3), config, tmp_path / "ft2",
                         ClickRefinerConfig(channels=(8, 8), feature_channels=8))
    with pytest.raises(ValueError, match="another refiner configuration"):
        other.initialise_from(path, "tiny-2")


def test_a_narrower_refiner_is_widened_to_the_same_output_and_then_trained(tmp_path: Path) -> None:
    torch.manual_seed(5)
    narrow = ClickRefiner(SMALL_REFINER).eval()
    torch.nn.init.normal_(narrow.head.weight)  # a non-trivial correction, as after training
    inputs = torch.randn(2, 11 + 8, 32, 32)
    wide = widen(narrow, (12, 24)).eval()
    assert wide.config.channels == (12, 24) and wide.stem.conv1.weight.shape[0] == 12
    with torch.no_grad():
        assert torch.allclose(wide(inputs), narrow(inputs), atol=1e-5)
        assert not torch.allclose(narrow(inputs), inputs[:, 2:3] * narrow.config.logit_clip, atol=1e-3)
    with pytest.raises(ValueError, match="cannot widen"):
        widen(narrow, (8, 8))
    path = save_click_refiner(tmp_path / CLICK_REFINER_FILE, narrow, "tiny-2")
    config = ClickTrainConfig(iterations=1, batch_size=2, warmup_iterations=1, max_clicks=2)
    trainer = ClickTrainer(IrisModel(TINY).eval(), ToyEpisodes(size=32, seed=3), config, tmp_path / "wide",
                           replace(SMALL_REFINER, channels=(12, 24)))
    trainer.initialise_from(path, "tiny-2")
    with torch.no_grad():
        assert torch.allclose(trainer.refiner.eval()(inputs), narrow(inputs), atol=1e-5)
    before = [p.clone() for p in trainer.refiner.parameters()]
    trainer.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.refiner.parameters(), strict=True))
    lean = ClickTrainer(IrisModel(TINY).eval(), ToyEpisodes(size=32, seed=3), config, tmp_path / "lean",
                        replace(SMALL_REFINER, channels=(12, 24), pixel_features=False))
    with pytest.raises(ValueError, match="differs in more than its channels"):
        lean.initialise_from(path, "tiny-2")


def _square_stack(depth: int, seed: int) -> tuple[IrisModel, np.ndarray, torch.Tensor, np.ndarray]:
    """A tiny untrained model, a noise stack (32, 32, depth), its model-space slices and a square prediction."""
    torch.manual_seed(0)
    model = IrisModel(TINY).eval()
    image = np.random.default_rng(seed).normal(size=(32, 32, depth)).astype(np.float32)
    queries = torch.from_numpy(np.moveaxis(image, -1, 0))[:, None]
    probability = np.full((32, 32, depth), 0.2, np.float32)
    probability[8:20, 8:20] = 0.9
    return model, image, queries, probability


def test_clicks_on_distant_slices_edit_only_their_own_neighbourhoods() -> None:
    depth = 20
    model, image, queries, probability = _square_stack(depth, 1)
    support_mask = torch.from_numpy((probability[..., 0] > 0.5).astype(np.float32))[None, None]
    tokens = encode_supports(model, queries[:1], support_mask).tokens
    clicks = np.zeros((32, 32, depth), np.uint8)
    clicks[25, 25, 2] = POSITIVE
    clicks[10, 10, 17] = NEGATIVE
    for method in ("local", "tuning", "combined"):
        config = RefineConfig(method=method, neighbour_slices=2)
        tuner = ClickTuner(QueryFeatures(model, queries), tokens, config)
        out = refine_slab(image, probability, clicks, config, tuner)
        assert np.array_equal(out[:, :, 5:15], probability[:, :, 5:15]), method  # beyond both clicks' reach
        assert not np.array_equal(out[:, :, 1], probability[:, :, 1]), method  # a neighbour of the first click
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_a_clicked_slice_becomes_a_support_for_the_slices_around_it() -> None:
    model, image, queries, probability = _square_stack(16, 2)
    clicks = np.zeros((32, 32, 16), np.uint8)
    clicks[22, 22, 5] = POSITIVE
    learned = LearnedClicks(ClickRefiner(SMALL_REFINER), QueryFeatures(model, queries))
    spread = RefineConfig(spread_decay=2.0, spread_weight=0.6, spread_min=0.05)  # reaches 4 slices: 0.6 e^-2 >= 0.05
    on = refine_slab(image, probability, clicks, spread, learned=learned)
    off = refine_slab(image, probability, clicks, replace(spread, spread_decay=0.0), learned=learned)
    assert np.array_equal(on[:, :, 10:], probability[:, :, 10:])  # beyond the spread
    assert np.array_equal(off[:, :, 8:], probability[:, :, 8:])  # beyond the neighbour slices' local edit
    support = torch.from_numpy(on[:, :, 5] >= 0.5).float()[None, None]
    with torch.no_grad():
        tokens = model.encode_task(queries[5:6], support)[0]
        predicted = torch.sigmoid(model.segment(queries[9:10], tokens))[0, 0].numpy()
    weight = 0.6 * np.exp(-4 / 2.0)
    assert np.allclose(on[:, :, 9], (1 - weight) * probability[:, :, 9] + weight * predicted, atol=1e-5)
    with pytest.raises(Exception, match="spread_decay"):
        RefineConfig(spread_decay=-1.0)


def test_the_tuning_blend_is_for_2d_images_unless_asked_for_in_volumes() -> None:
    model, image, queries, probability = _square_stack(6, 3)
    support_mask = torch.from_numpy((probability[..., 0] > 0.5).astype(np.float32))[None, None]
    features = QueryFeatures(model, queries)
    tuner = ClickTuner(features, encode_supports(model, queries[:1], support_mask).tokens, RefineConfig())
    learned = LearnedClicks(ClickRefiner(SMALL_REFINER), features)
    clicks = np.zeros((32, 32, 6), np.uint8)
    clicks[25, 25, 3], clicks[10, 10, 3] = POSITIVE, NEGATIVE

    def refined(config: RefineConfig) -> np.ndarray:
        return refine_slab(image, probability, clicks, config, tuner, learned=learned)

    with_tuning = RefineConfig(learned_tuning=True)
    assert np.array_equal(refined(with_tuning), refined(RefineConfig()))
    assert not np.allclose(refined(replace(with_tuning, learned_tuning_in_volumes=True)), refined(with_tuning),
                           atol=1e-3)
