"""Within-volume propagation: painted slices unchanged, the walk stops at the structure's end, caches, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iris_engine.config import InferenceConfig, ModelConfig
from iris_engine.errors import IrisInputError
from iris_engine.inference import IrisSegmenter
from iris_engine.io.volume import Volume
from iris_engine.model.iris import IrisModel
from iris_engine.propagation import PropagationConfig, plan_sources, walk_extent

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)
SHAPE = (24, 20, 12)


def _segmenter(threshold: float = 0.5) -> IrisSegmenter:
    torch.manual_seed(0)
    return IrisSegmenter(IrisModel(TINY), config=InferenceConfig(threshold=threshold))


def _volume(affine: np.ndarray | None = None) -> Volume:
    rng = np.random.default_rng(0)
    array = rng.normal(size=SHAPE).astype(np.float32)
    array[6:16, 5:14, 2:10] += 3.0
    return Volume(array, np.eye(4) if affine is None else affine, "MR")


def _painted() -> np.ndarray:
    painted = np.zeros(SHAPE, dtype=np.uint8)
    painted[6:16, 5:14, 3] = 1
    painted[8:12, 6:9, 8] = 1
    painted[14:18, 12:16, 8] = 2
    return painted


def test_walk_keeps_the_connected_structure_and_stops_where_it_ends() -> None:
    predicted = np.zeros((30, 16, 16), dtype=bool)
    predicted[5:13, 4:10, 4:10] = True  # the structure: slices 5..12
    predicted[15:21, 4:10, 4:10] = True  # a copy beyond the extent, after two empty slices
    predicted[5:13, 13:15, 13:15] = True  # an unconnected blob beside the structure
    painted = {8: predicted[8] & (np.arange(16)[None, :] < 13)}
    out = walk_extent(lambda z, step: predicted[z], 30, painted, PropagationConfig())
    expected = np.zeros_like(predicted)
    expected[5:13, 4:10, 4:10] = True
    np.testing.assert_array_equal(out, expected)


def test_walk_stops_at_an_empty_painted_slice_and_when_the_area_vanishes() -> None:
    predicted = np.ones((10, 8, 8), dtype=bool)
    painted = {2: np.ones((8, 8), dtype=bool), 6: np.zeros((8, 8), dtype=bool)}
    painted[2][0, 0] = False
    out = walk_extent(lambda z, step: predicted[z], 10, painted, PropagationConfig())
    assert out[:6].all(axis=(1, 2)).tolist() == [True, True, False, True, True, True]
    assert not out[6:].any()
    shrinking = np.zeros((10, 40, 40), dtype=bool)
    shrinking[:, :20, :20] = True
    shrinking[7] = False
    shrinking[7, :2, :2] = True  # 4 px: below 2 % of the painted 400 px
    shrinking[8:, :, :] = True
    out = walk_extent(lambda z, step: shrinking[z], 10, {5: shrinking[5].copy()}, PropagationConfig())
    assert out[:7].any(axis=(1, 2)).all() and not out[7:].any()


def test_plan_weights_nearest_painted_slices_by_distance() -> None:
    plans = plan_sources([2, 6, 10], {2: {0}, 6: {0, 1}, 10: {1}}, 12, 2)
    assert plans[3][0] == [(2, 0.75), (6, 0.25)]
    assert plans[3][1] == [(6, 1.0)]  # class 1 is absent on slice 2: only slice 6 supports it
    assert plans[0][0] == [(2, 1.0)] and plans[0][1] == []
    assert plans[11] == [[], [(10, 1.0)]]
    assert not ({2, 6, 10} & set(plans))


def test_painted_slices_come_back_unchanged_on_the_input_grid() -> None:
    affine = np.array([[0.0, -0.9, 0.0, 4.0], [0.8, 0.0, 0.0, -3.0], [0.0, 0.0, 2.5, 1.0], [0.0, 0.0, 0.0, 1.0]])
    volume, painted = _volume(affine), _painted()
    before = painted.copy()
    result = _segmenter().propagate(volume, painted, ["organ", "lesion"])
    np.testing.assert_array_equal(painted, before)
    assert result.masks.shape == result.probabilities.shape == (2, *SHAPE)
    assert result.painted_slices == [3, 8] and result.axis == "axial"
    labels = result.label_map()
    np.testing.assert_array_equal(labels[:, :, [3, 8]], painted[:, :, [3, 8]])


def test_a_class_stops_at_a_painted_slice_without_it() -> None:
    painted = np.zeros(SHAPE, dtype=np.uint8)
    painted[6:16, 5:14, 3] = 1
    painted[8:10, 6:8, 6] = 2
    result = _segmenter(threshold=0.0).propagate(_volume(), painted, ["organ", "lesion"], painted_slices=[9])
    assert result.painted_slices == [3, 6, 9]
    assert result.masks[0][:, :, 4:6].all()  # threshold 0: every pixel is predicted, the walk goes on
    assert not result.masks[0][:, :, 6].any() and not result.masks[0][:, :, 7:].any()
    assert not result.masks[1][:, :, :3].any() and not result.masks[1][:, :, 9:].any()
    assert result.masks[1][:, :, 4:6].all() and result.masks[1][:, :, 7:9].all()


def test_repropagation_recomputes_only_the_slices_whose_supports_changed() -> None:
    segmenter = _segmenter(threshold=0.0)
    volume = _volume()
    painted = np.zeros(SHAPE, dtype=np.uint8)
    painted[6:16, 5:14, 3] = 1
    painted[8:12, 6:9, 9] = 1
    first = segmenter.propagate(volume, painted, ["organ"])
    assert first.recomputed_slices == SHAPE[2] - 2
    assert segmenter.propagate(volume, painted, ["organ"]).recomputed_slices == 0
    corrected = painted.copy()
    corrected[7:12, 6:10, 11] = 1  # a fixed slice becomes a painted slice
    second = segmenter.propagate(volume, corrected, ["organ"])
    assert second.recomputed_slices == 1  # slice 10, now between 9 and 11; slices 0-8 keep their supports
    np.testing.assert_array_equal(second.probabilities[..., :9], first.probabilities[..., :9])


def test_coronal_painting() -> None:
    painted = np.zeros(SHAPE, dtype=np.uint8)
    painted[6:16, 7, 2:10] = 1
    result = _segmenter().propagate(_volume(), painted, ["organ"], axis="coronal")
    assert result.painted_slices == [7] and result.axis == "coronal"
    np.testing.assert_array_equal(result.masks[0][:, 7, :], painted[:, 7, :] == 1)


@pytest.mark.parametrize(("painted", "names", "kwargs", "message"), [
    (np.zeros((24, 20, 11), np.uint8), ["organ"], {}, "does not match the volume shape"),
    (np.zeros(SHAPE, np.uint8), ["organ"], {}, "nothing is painted"),
    (_painted(), ["organ"], {}, "painted label 2 has no class name"),
    (_painted(), [], {}, "name every painted class"),
    (_painted(), ["organ", "lesion", "cyst"], {}, "cyst are not painted"),
    (_painted() * 0.5, ["organ", "lesion"], {}, "non-integer"),
    (_painted(), ["organ", "lesion"], {"axis": "oblique"}, "unknown axis"),
    (_painted(), ["organ", "lesion"], {"painted_slices": [12]}, "must lie in 0..11"),
])
def test_bad_input_is_refused_clearly(painted: np.ndarray, names: list[str], kwargs: dict, message: str) -> None:
    segmenter = _segmenter()
    before = painted.copy()
    with pytest.raises(IrisInputError, match=message):
        segmenter.propagate(_volume(), painted, names, **kwargs)
    np.testing.assert_array_equal(painted, before)
    assert not segmenter.propagator._states


def test_a_2d_image_is_refused() -> None:
    image = Volume(np.zeros((16, 16), np.float32))
    with pytest.raises(IrisInputError, match="needs a 3D volume"):
        _segmenter().propagate(image, np.ones((16, 16), np.uint8), ["organ"])


@pytest.mark.parametrize(("rows", "limit", "expected"), [(slice(10, 11), 3.5, 2), (slice(6, 16), 3.5, 1),
                                                         (slice(10, 11), 0.0, 1)])
def test_a_thin_painted_structure_is_propagated_at_twice_the_input_size(rows: slice, limit: float,
                                                                         expected: int) -> None:
    torch.manual_seed(0)
    segmenter = IrisSegmenter(IrisModel(TINY), config=InferenceConfig(fine_scale_thickness=limit))
    seen: list[int] = []
    segment = segmenter.model.segment
    segmenter.model.segment = lambda images, tokens: seen.append(images.shape[-1]) or segment(images, tokens)
    painted = np.zeros(SHAPE, dtype=np.uint8)
    painted[rows, 2:18, 3] = 1
    painted[rows, 3:17, 8] = 1
    result = segmenter.propagate(_volume(), painted, ["line"])
    assert result.input_scale == expected
    assert seen and set(seen) == {TINY.image_size * expected}
    assert result.masks.shape == result.probabilities.shape == (1, *SHAPE)
    np.testing.assert_array_equal(result.masks[0][:, :, [3, 8]], painted[:, :, [3, 8]] > 0)
