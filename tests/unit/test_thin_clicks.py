"""Negative clicks on thin masks: the halo beside a ridge drops out, the ridge stays, the response is kept."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from iris_engine.errors import IrisInputError
from iris_engine.metrics import dice
from iris_engine.model.click_refiner import NEGATIVE, POSITIVE
from iris_engine.refinement import RefineConfig
from iris_engine.thin_clicks import drop_halo, mean_inner_distance, ridge_response


def _lines(dark: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three one-pixel lines on a smooth noisy background; the 'prediction' is a 5 px band around each."""
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.normal(size=(96, 96)), 2).astype(np.float32)
    truth = np.zeros((96, 96), bool)
    truth[20, 8:88] = truth[48, 8:88] = truth[76, 8:88] = True
    image = np.where(truth, image - 3.0 if dark else image + 3.0, image).astype(np.float32)
    band = ndimage.binary_dilation(truth, iterations=2)
    probability = np.where(truth, 0.9, np.where(band, 0.7, 0.05)).astype(np.float32)
    return image, truth, probability


@pytest.mark.parametrize("dark", [True, False])
def test_a_negative_click_in_the_halo_thins_the_mask_to_its_ridges(dark: bool) -> None:
    image, truth, probability = _lines(dark)
    clicks = np.zeros(truth.shape, np.uint8)
    clicks[22, 50] = NEGATIVE  # two pixels off the middle line
    out = drop_halo(image, probability, clicks, keep=0.3, threshold=0.5)
    before, after = probability >= 0.5, out >= 0.5
    assert after[truth].all() and not after[22, 50] and not (after & ~before).any()
    assert after.sum() < 0.85 * before.sum() and dice(after, truth) > dice(before, truth) + 0.05
    assert np.array_equal(out[~before], probability[~before])


def test_keep_limits_how_much_of_the_mask_one_click_removes() -> None:
    image, truth, probability = _lines(True)
    clicks = np.zeros(truth.shape, np.uint8)
    clicks[22, 50] = NEGATIVE
    before = (probability >= 0.5).sum()
    kept = [(drop_halo(image, probability, clicks, keep, 0.5) >= 0.5).sum() for keep in (0.3, 0.9, 1.0)]
    assert kept[0] < kept[1] < kept[2] == before and kept[1] >= 0.9 * before - 1


def test_without_a_negative_click_nothing_changes() -> None:
    image, truth, probability = _lines(True)
    clicks = np.zeros(truth.shape, np.uint8)
    clicks[20, 50] = POSITIVE
    assert np.array_equal(drop_halo(image, probability, clicks, 0.3, 0.5), probability)


def test_the_ridge_response_peaks_on_the_lines_and_the_width_follows_the_mask() -> None:
    image, truth, probability = _lines(True)
    response = ridge_response(image, probability >= 0.5)
    assert response.min() >= 0.0 and response.max() <= 1.0
    assert response[truth].mean() > 4 * response[~ndimage.binary_dilation(truth, iterations=3)].mean()
    assert mean_inner_distance(np.ones((1, 7), bool)) == pytest.approx(1.0)


def test_the_keep_share_is_checked() -> None:
    for keep in (0.0, 1.5):
        with pytest.raises(IrisInputError, match="thin_keep"):
            RefineConfig(thin_keep=keep)


def test_the_last_ridge_response_is_kept_for_the_next_click_on_the_same_result() -> None:
    image, truth, probability = _lines(True)
    mask = probability >= 0.5
    first = ridge_response(image, mask)
    assert ridge_response(image.copy(), mask.copy()) is first and not first.flags.writeable
    other = ridge_response(image, truth)
    assert other is not first and not np.array_equal(other, first)
