"""Interactive refinement: clicks honoured, edits follow the image, neighbours in volumes, clear errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from iris_engine.config import ModelConfig
from iris_engine.errors import IrisInputError
from iris_engine.inference import IrisSegmenter, Support, VolumeSegmentation
from iris_engine.io.volume import Volume
from iris_engine.model.click_refiner import ClickRefiner, ClickRefinerConfig
from iris_engine.model.iris import IrisModel
from iris_engine.refinement import (
    METHODS,
    NEGATIVE,
    POSITIVE,
    Click,
    ClickTuner,
    QueryFeatures,
    RefineConfig,
    clicks_from_label_map,
    learned_clicks,
    refine_on_grid,
    refine_segmentation,
    refine_slab,
    scribble,
)

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)


@pytest.fixture()
def segmenter() -> IrisSegmenter:
    torch.manual_seed(0)
    return IrisSegmenter(IrisModel(TINY), click_refiner=ClickRefiner(ClickRefinerConfig(channels=(8, 16),
                                                                                        feature_channels=8)))


def _edge_image(shape: tuple[int, int] = (48, 48), edge: int = 24) -> np.ndarray:
    """Bright left part (columns < edge), dark right part, a little noise."""
    image = np.zeros(shape, dtype=np.float32)
    image[:, :edge] = 2.0
    return image + 0.05 * np.random.default_rng(0).normal(size=shape).astype(np.float32)


def _segmented(segmenter: IrisSegmenter, shape: tuple[int, ...]) -> tuple[Volume, VolumeSegmentation]:
    rng = np.random.default_rng(1)
    array = rng.normal(size=shape).astype(np.float32)
    affine = np.diag([1.0, 1.0, 3.0, 1.0]) if len(shape) == 3 else np.eye(4)
    volume = Volume(array, affine, "MR")
    mask = np.zeros(shape, np.uint8)
    mask[tuple(slice(s // 4, s // 2) for s in shape)] = 1
    segmented = segmenter.segment(volume, "one_shot", [Support(volume, mask)], ["organ"])
    probability = np.where(mask[None] > 0, 0.8, 0.2).astype(np.float32)  # a partial mask, whatever the tiny model says
    return volume, VolumeSegmentation(probability, probability >= 0.5, ["organ"], "one_shot",
                                      segmenter.model_version, embedding=segmented.embedding)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_honours_every_click(segmenter: IrisSegmenter, method: str) -> None:
    volume, result = _segmented(segmenter, (40, 36))
    inside = tuple(np.argwhere(result.masks[0])[0])
    outside = tuple(np.argwhere(~result.masks[0])[0])
    clicks = [Click(outside, True), Click(inside, False), *scribble([(30, 2), (30, 12)], True)]
    refined = segmenter.refine(volume, result, clicks, RefineConfig(method=method))
    assert refined.masks.shape == result.masks.shape == refined.probabilities.shape
    assert refined.masks[0][outside] and not refined.masks[0][inside]
    assert all(refined.masks[0][30, c] for c in range(2, 13))
    assert np.array_equal(refined.masks, refined.probabilities >= segmenter.config.threshold)


def test_local_edit_follows_an_intensity_edge_where_a_disc_does_not() -> None:
    image = _edge_image()
    clicks = np.zeros((48, 48, 1), np.uint8)
    clicks[24, 20, 0] = POSITIVE
    empty = np.zeros((48, 48, 1), np.float32)
    organ_reach = RefineConfig(method="local", empty_reach=0.2)  # as far as a click on an organ's slice
    local = refine_slab(image[..., None], empty, clicks, organ_reach)[..., 0] >= 0.5
    disc = refine_slab(image[..., None], empty, clicks, RefineConfig(method="disc", disc_radius=6 / 48))[..., 0] >= 0.5
    assert disc[24, 25] and disc[24, 15]  # the disc spills over the edge at column 24 ...
    assert local[24, 15] and local[24, 23] and not local[:, 24:].any()  # ... the local edit stops at it
    assert local.sum() > disc.sum()  # and reaches further along the bright side


def test_negative_click_removes_the_connected_false_positive_only() -> None:
    image = np.zeros((64, 64), np.float32)
    image[10:18, 10:18] = image[30:38, 30:38] = 2.0
    probability = np.zeros((64, 64, 1), np.float32)
    probability[10:18, 10:18] = probability[30:38, 30:38] = 0.9
    clicks = np.zeros((64, 64, 1), np.uint8)
    clicks[14, 14, 0] = NEGATIVE
    refined = refine_slab(image[..., None], probability, clicks, RefineConfig(method="local"))[..., 0] >= 0.5
    assert not refined[10:18, 10:18].any() and refined[30:38, 30:38].all()


def test_a_click_reaches_neighbour_slices_in_a_volume_only_within_range() -> None:
    image = np.zeros((32, 32, 9), np.float32)
    image[8:24, 8:24, :] = 2.0
    clicks = np.zeros(image.shape, np.uint8)
    clicks[16, 16, 4] = POSITIVE
    config = RefineConfig(method="local", neighbour_slices=1)
    refined = refine_slab(image, np.zeros(image.shape, np.float32), clicks, config) >= 0.5
    assert refined[:, :, 3:6].any(axis=(0, 1)).all()
    assert not refined[:, :, :3].any() and not refined[:, :, 6:].any()


def _count_encoded(model: IrisModel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of slices of each later `encode_query` call on `model`."""
    encoded: list[int] = []
    encode = model.encode_query
    monkeypatch.setattr(model, "encode_query", lambda images: encoded.append(len(images)) or encode(images))
    return encoded


def test_clicks_on_the_same_volume_encode_each_slice_once(segmenter: IrisSegmenter,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    volume, result = _segmented(segmenter, (32, 32, 12))
    encoded = _count_encoded(segmenter.model, monkeypatch)
    clicks = [Click((12, 12, 5), True)]
    segmenter.refine(volume, result, clicks)
    first = sum(encoded)
    assert first > 1  # the clicked slice and the slices the spread reaches
    again = segmenter.refine(volume, result, [*clicks, Click((30, 30, 5), False)])
    assert sum(encoded) == first  # same slices, nothing encoded again
    uncached = refine_segmentation(segmenter, volume, result, [*clicks, Click((30, 30, 5), False)])
    assert np.allclose(again.probabilities, uncached.probabilities, atol=1e-5)
    other = Volume(volume.array + 1.0, volume.affine, volume.modality)
    encoded.clear()
    segmenter.refine(other, result, clicks)
    assert sum(encoded) == first  # another image: encoded afresh


def test_query_features_keep_the_most_recently_used_slices(segmenter: IrisSegmenter,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    model = segmenter.model
    queries = torch.rand(6, 1, 32, 32)
    with torch.no_grad():
        direct = model.decoder.pixel_features(model.encode_query(queries[1:2])[1:])
    encoded = _count_encoded(model, monkeypatch)
    features = QueryFeatures(model, queries, batch=2, max_slices=3)
    assert torch.allclose(features.pixels([0, 1, 2, 3])[1:2], direct, atol=1e-5)
    assert encoded == [2, 2]
    features.pixels([2, 3, 1])
    assert sum(encoded) == 4  # kept
    features.pixels([0])
    assert sum(encoded) == 5  # slice 0 was the oldest and dropped


def _record_calls(refiner: ClickRefiner, name: str, seen: list[tuple[str, int]],
                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Append (name, input size) to `seen` at each forward pass of `refiner`."""
    forward = refiner.forward
    monkeypatch.setattr(refiner, "forward", lambda inputs: seen.append((name, inputs.shape[-1])) or forward(inputs))


def test_a_result_read_at_twice_the_input_size_goes_to_the_fine_refiner_on_the_fine_features(
        segmenter: IrisSegmenter, monkeypatch: pytest.MonkeyPatch) -> None:
    volume, result = _segmented(segmenter, (128, 112))
    fine_result = replace(result, input_scale=2)
    seen: list[tuple[str, int]] = []
    fine_refiner = ClickRefiner(ClickRefinerConfig(channels=(8, 16), feature_channels=8))
    with torch.no_grad():  # a fresh refiner returns its start unchanged: make it say something
        for parameter in fine_refiner.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    _record_calls(segmenter.click_refiner, "grid", seen, monkeypatch)
    _record_calls(fine_refiner, "fine", seen, monkeypatch)
    clicks = [Click((70, 50), True)]
    without = segmenter.refine(volume, fine_result, clicks)
    segmenter.fine_click_refiner = fine_refiner
    encoded = _count_encoded(segmenter.model, monkeypatch)
    with_fine = segmenter.refine(volume, fine_result, clicks)
    assert encoded == [1]  # the fine input's slice (the model-grid one is kept from the first call)
    segmenter.refine(volume, fine_result, [*clicks, Click((20, 20), False)])
    assert encoded == [1]  # kept for the next click on the same image
    segmenter.refine(volume, result, clicks)
    assert seen == [("grid", 32), ("fine", 64), ("fine", 64), ("grid", 32)]
    assert with_fine.masks[0][70, 50] and not np.array_equal(with_fine.probabilities, without.probabilities)


def test_the_fine_refiner_reads_fine_features_and_carries_its_own_thin_weight(segmenter: IrisSegmenter) -> None:
    grid = QueryFeatures(segmenter.model, torch.rand(3, 1, 32, 32))
    fine = QueryFeatures(segmenter.model, torch.rand(3, 1, 64, 64))
    fine_refiner = ClickRefiner(ClickRefinerConfig(channels=(8, 16), feature_channels=8))
    config = RefineConfig(thin_learned_weight=0.3, fine_learned_weight=0.6)

    def never() -> QueryFeatures:
        raise AssertionError("the fine features are computed only for a fine result with a fine refiner")

    learned, fine_config = learned_clicks(segmenter.click_refiner, fine_refiner, grid, lambda: fine, 2, config)
    assert learned is not None and learned.refiner is fine_refiner
    assert learned.features is fine and learned.grid_features is grid and fine_config.thin_learned_weight == 0.6
    for refiner, fine_one, scale in ((fine_refiner, fine_refiner, 1), (segmenter.click_refiner, None, 2)):
        learned, same = learned_clicks(refiner, fine_one, grid, never, scale, config)
        assert learned is not None and learned.refiner is refiner and learned.features is learned.grid_features
        assert same == config
    assert learned_clicks(None, None, grid, never, 2, config) == (None, config)
    with pytest.raises(IrisInputError, match="fine_learned_weight"):
        RefineConfig(fine_learned_weight=1.5)


def test_tuning_moves_the_prediction_towards_the_clicks(segmenter: IrisSegmenter) -> None:
    volume, result = _segmented(segmenter, (32, 32))
    queries, _, _ = segmenter.to_model_space(volume)
    features = QueryFeatures(segmenter.model, queries)
    tuner = ClickTuner(features, result.embedding.tokens, RefineConfig(method="tuning"))
    before = tuner.predict(result.embedding.tokens, [0], (32, 32))
    high = np.unravel_index(int(np.argmax(before[..., 0])), (32, 32))
    clicks = np.zeros((32, 32, 1), np.uint8)
    clicks[high[0], high[1], 0] = NEGATIVE
    tuned = tuner.predict(tuner.tune(before, clicks, [0]), [0], (32, 32))
    assert tuned[high[0], high[1], 0] < before[high[0], high[1], 0] - 0.05


def test_refinement_restarts_from_the_result_so_undo_is_dropping_a_click(segmenter: IrisSegmenter) -> None:
    volume, result = _segmented(segmenter, (40, 36))
    first = Click(tuple(np.argwhere(~result.masks[0])[0]), True)
    second = Click(tuple(np.argwhere(result.masks[0])[0]), False)
    config = RefineConfig(method="local")
    once = segmenter.refine(volume, result, [first], config)
    segmenter.refine(volume, result, [first, second], config)
    again = segmenter.refine(volume, result, [first], config)
    assert np.array_equal(once.masks, again.masks)


def test_a_volume_click_refines_its_slice_and_keeps_other_classes(segmenter: IrisSegmenter) -> None:
    shape = (30, 28, 8)
    volume = Volume(np.random.default_rng(2).normal(size=shape).astype(np.float32), np.eye(4), "MR")
    mask = np.zeros(shape, np.uint8)
    mask[5:12, 5:12, 2:6] = 1
    mask[18:25, 15:24, 2:6] = 2
    result = segmenter.segment(volume, "one_shot", [Support(volume, mask)], ["a", "b"])
    refined = segmenter.refine(volume, result, [Click((20, 20, 4), False, "b")], RefineConfig(method="combined"))
    assert not refined.masks[1][20, 20, 4]
    assert np.array_equal(refined.masks[0], result.masks[0])
    assert np.array_equal(refined.masks[1][:, :, :2], result.masks[1][:, :, :2])


def test_scribbles_and_click_maps() -> None:
    stroke = scribble([(2, 2), (2, 6), (5, 6)], False, "a")
    assert {c.position for c in stroke} == {(2, c) for c in range(2, 7)} | {(r, 6) for r in range(3, 6)}
    assert all(not c.positive and c.class_name == "a" for c in stroke)
    assert scribble([(1, 1, 3), (1, 3, 3)])[-1].position == (1, 3, 3)
    marks = np.zeros((4, 5), np.uint8)
    marks[1, 2], marks[3, 4] = POSITIVE, NEGATIVE
    assert {(c.position, c.positive) for c in clicks_from_label_map(marks)} == {((1, 2), True), ((3, 4), False)}
    with pytest.raises(IrisInputError, match="only 0, 1"):
        clicks_from_label_map(np.full((3, 3), 5))
    with pytest.raises(IrisInputError, match="one slice"):
        scribble([(1, 1, 0), (1, 2, 1)])


def test_bad_clicks_and_results_get_clear_errors(segmenter: IrisSegmenter) -> None:
    volume, result = _segmented(segmenter, (40, 36))
    click = [Click((3, 3), True)]
    with pytest.raises(IrisInputError, match="outside the image"):
        segmenter.refine(volume, result, [Click((40, 3), True)])
    with pytest.raises(IrisInputError, match="outside the image"):
        segmenter.refine(volume, result, [Click((-1, 3), True)])
    with pytest.raises(IrisInputError, match="2 axes"):
        segmenter.refine(volume, result, [Click((1, 2, 3), True)])
    with pytest.raises(IrisInputError, match="whole voxel indices"):
        segmenter.refine(volume, result, [Click((3.5, 3), True)])
    assert segmenter.refine(volume, result, [Click((np.int64(3), 3.0), True)]).masks[0][3, 3]
    with pytest.raises(IrisInputError, match="segment the image first"):
        segmenter.refine(volume, None, click)
    empty = VolumeSegmentation(np.zeros((0, 40, 36), np.float32), np.zeros((0, 40, 36), bool), [], "one_shot", "")
    with pytest.raises(IrisInputError, match="empty or does not belong"):
        segmenter.refine(volume, empty, click)
    other = Volume(np.zeros((20, 20), np.float32), np.eye(4), "MR")
    with pytest.raises(IrisInputError, match="does not belong to this image"):
        segmenter.refine(other, result, click)
    with pytest.raises(IrisInputError, match="no clicks"):
        segmenter.refine(volume, result, [])
    with pytest.raises(IrisInputError, match="class 'liver'"):
        segmenter.refine(volume, result, [Click((3, 3), True, "liver")])
    with pytest.raises(IrisInputError, match="unknown refinement method"):
        RefineConfig(method="magic")
    without_embedding = VolumeSegmentation(result.probabilities, result.masks, ["organ"], "mask", "")
    with pytest.raises(IrisInputError, match="needs the result's task embedding"):
        segmenter.refine(volume, without_embedding, click, RefineConfig(method="tuning"))
    assert segmenter.refine(volume, without_embedding, click, RefineConfig(method="local")).masks[0][3, 3]


def test_a_click_on_a_thin_structure_edits_a_thin_region() -> None:
    """The reach follows the structure's size: a click beside a 4 px wide strip stays narrow, beside a 40 px
    wide block it may reach further (same image, same click distance)."""
    image = np.zeros((96, 96, 1), np.float32)
    clicks = np.zeros((96, 96, 1), np.uint8)
    clicks[48, 60, 0] = POSITIVE
    thin = np.zeros((96, 96, 1), np.float32)
    thin[8:88, 52:56] = 0.9
    wide = np.zeros((96, 96, 1), np.float32)
    wide[8:88, 16:56] = 0.9
    scaled = RefineConfig(method="local")
    unscaled = replace(scaled, structure_scale=0.0)
    grown_thin = (refine_slab(image, thin, clicks, scaled) >= 0.5).sum() - (thin >= 0.5).sum()
    grown_wide = (refine_slab(image, wide, clicks, scaled) >= 0.5).sum() - (wide >= 0.5).sum()
    grown_unscaled = (refine_slab(image, thin, clicks, unscaled) >= 0.5).sum() - (thin >= 0.5).sum()
    assert 0 < grown_thin < grown_wide and grown_thin < grown_unscaled


def test_a_click_on_an_empty_slice_adds_a_small_region() -> None:
    """With no mask on the clicked slice the reach is `empty_reach` of the side, not the organ-sized `reach`."""
    image = np.zeros((96, 96, 1), np.float32)
    clicks = np.zeros((96, 96, 1), np.uint8)
    clicks[48, 48, 0] = POSITIVE
    empty = np.zeros((96, 96, 1), np.float32)
    config = RefineConfig(method="local")
    added = (refine_slab(image, empty, clicks, config) >= 0.5).sum()
    wider = (refine_slab(image, empty, clicks, replace(config, empty_reach=config.reach)) >= 0.5).sum()
    radius = np.sqrt(added / np.pi)
    assert 0.5 * config.empty_reach * 96 < radius <= config.empty_reach * 96 and added < wider / 4
    with pytest.raises(IrisInputError, match="empty_reach"):
        RefineConfig(empty_reach=0)


def test_learned_without_a_refiner_falls_back_to_the_local_edit_with_a_warning(segmenter: IrisSegmenter) -> None:
    volume, result = _segmented(segmenter, (40, 36))
    clicks = [Click(tuple(np.argwhere(~result.masks[0])[0]), True)]
    local = segmenter.refine(volume, result, clicks, RefineConfig(method="local"))
    segmenter.click_refiner = None
    with pytest.warns(UserWarning, match="refining with 'local' instead of 'learned'"):
        fallback = segmenter.refine(volume, result, clicks, RefineConfig(method="learned"))
    assert np.array_equal(fallback.probabilities, local.probabilities)


def test_a_refined_result_keeps_the_input_scale_it_was_segmented_at(segmenter: IrisSegmenter) -> None:
    volume, result = _segmented(segmenter, (40, 36))
    fine = replace(result, input_scale=2)
    clicks = [Click(tuple(np.argwhere(~result.masks[0])[0]), True)]
    assert segmenter.refine(volume, fine, clicks, RefineConfig(method="local")).input_scale == 2


def test_a_large_slice_is_refined_on_the_model_view_of_the_result(segmenter: IrisSegmenter,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    volume, result = _segmented(segmenter, (128, 112))  # 4 x the tiny model's 32 px input
    clicks = [Click((70, 50), True), Click((70, 51), False)]  # both in one cell of the 32 px view
    grids: list[tuple[int, ...]] = []

    def spy(image: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
        grids.append(image.shape)
        return refine_slab(image, *args, **kwargs)

    monkeypatch.setattr("iris_engine.refinement.refine_slab", spy)
    for scale, config in ((1, RefineConfig()), (2, RefineConfig()), (1, RefineConfig(model_grid=False))):
        refined = segmenter.refine(volume, replace(result, input_scale=scale), clicks, config)
        assert refined.probabilities.shape == result.probabilities.shape
        assert refined.masks[0][70, 50] and not refined.masks[0][70, 51]
    assert grids == [(32, 32, 1), (64, 64, 1), (128, 112, 1)]


def test_a_slab_no_larger_than_the_view_is_refined_as_it_is() -> None:
    image = _edge_image((30, 24))[..., None]
    probability = np.full((30, 24, 1), 0.2, np.float32)
    clicks = np.zeros((30, 24, 1), np.uint8)
    clicks[10, 5, 0] = POSITIVE
    config = RefineConfig(method="local")
    expected = refine_slab(image, probability, clicks, config)
    assert np.array_equal(refine_on_grid(image, probability, clicks, config, 32), expected)
    assert np.array_equal(refine_on_grid(image, probability, clicks, config, None), expected)
    with pytest.raises(IrisInputError, match="no clicks"):
        refine_on_grid(np.zeros((64, 64, 1), np.float32), np.zeros((64, 64, 1), np.float32),
                       np.zeros((64, 64, 1), np.uint8), config, 32)


def test_refining_on_the_view_keeps_the_slab_detail_where_nothing_changed() -> None:
    image = _edge_image((128, 128), edge=64)[..., None]
    probability = np.full((128, 128, 1), 0.1, np.float32)
    probability[100:120:2, 100:120, 0] = 0.9  # one-pixel stripes no 32 px view can hold (a brush edit, say)
    clicks = np.zeros((128, 128, 1), np.uint8)
    clicks[20, 20, 0] = POSITIVE
    refined = refine_on_grid(image, probability, clicks, RefineConfig(method="local"), 32)
    assert refined[20, 20, 0] >= 0.5 and refined[:40, :40, 0].mean() > probability[:40, :40, 0].mean()
    assert np.array_equal(refined[96:, 96:], probability[96:, 96:])  # far from the click: untouched
