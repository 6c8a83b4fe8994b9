"""The threshold calibrated on the support (2x reads): which threshold it picks, how the offset moves the
probabilities, and how the task embedding carries it through the strategies and the sanity check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from iris_engine import onnx_runtime, strategies
from iris_engine.calibration import CalibrationConfig, apply_offsets, offsets_of, support_thresholds
from iris_engine.config import InferenceConfig, ModelConfig
from iris_engine.embedding import TaskEmbedding
from iris_engine.errors import IrisInputError
from iris_engine.input_scale import FINE_SCALE
from iris_engine.model.iris import IrisModel

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)


@pytest.fixture(autouse=True)
def float32(monkeypatch):
    monkeypatch.setattr(onnx_runtime, "native_bf16", lambda: False)


@pytest.fixture(scope="module")
def model() -> IrisModel:
    torch.manual_seed(0)
    return IrisModel(TINY).eval()


def _ramp(size: int = 20) -> torch.Tensor:
    """(1, 1, size, size) probabilities rising from 0 to 1 along the rows."""
    return torch.linspace(0.0, 1.0, size).view(1, 1, size, 1).expand(1, 1, size, size).clone()


@pytest.mark.parametrize("true_threshold", [0.2, 0.8])
def test_the_threshold_that_reproduces_the_support_mask_is_chosen(true_threshold: float) -> None:
    probabilities = _ramp()
    mask = (probabilities >= true_threshold).float()
    chosen = support_thresholds(probabilities, mask, CalibrationConfig())
    assert (probabilities >= chosen).equal(mask >= 0.5)
    assert abs(float(chosen) - true_threshold) < 0.06


def test_a_threshold_near_one_half_stays_one_half() -> None:
    probabilities = _ramp(40)
    mask = (probabilities >= 0.56).float()
    assert float(support_thresholds(probabilities, mask, CalibrationConfig())) == 0.5
    assert float(support_thresholds(probabilities, mask, CalibrationConfig(dead_zone=0.0))) != 0.5


def test_each_class_gets_its_own_threshold() -> None:
    probabilities = torch.cat([_ramp(), _ramp()], dim=1)
    masks = torch.cat([probabilities[:, :1] >= 0.25, probabilities[:, 1:] >= 0.85], dim=1).float()
    low, high = support_thresholds(probabilities, masks, CalibrationConfig()).tolist()
    assert low < 0.4 and high > 0.75


def test_the_offset_moves_the_threshold_to_one_half_and_keeps_the_order() -> None:
    probabilities = _ramp()
    shifted = apply_offsets(probabilities, offsets_of(torch.tensor([0.8])))
    assert torch.equal(shifted >= 0.5, probabilities >= 0.8 - 1e-6)
    assert torch.all(shifted.flatten().diff() >= 0)
    torch.testing.assert_close(apply_offsets(probabilities, torch.zeros(1)), probabilities.clamp(1e-6, 1 - 1e-6))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(IrisInputError):
        CalibrationConfig(lowest=0.6)
    with pytest.raises(IrisInputError):
        CalibrationConfig(dead_zone=-0.1)
    with pytest.raises(IrisInputError):
        TaskEmbedding(torch.zeros(2, 3, 4), ["a", "b"], logit_offsets=torch.zeros(3))


def _fine_support(model: IrisModel) -> tuple[torch.Tensor, torch.Tensor]:
    size = FINE_SCALE * model.config.image_size
    image = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(1, 1, size, size)
    mask[0, 0, size // 2 : size // 2 + 2, 2 : size - 2] = 1
    return image + 2 * mask, mask


def test_only_supports_read_at_the_fine_scale_are_calibrated(model: IrisModel) -> None:
    image, mask = _fine_support(model)
    fine = strategies.encode_supports(model, image, mask)
    assert fine.logit_offsets is not None and fine.logit_offsets.shape == (1,)
    assert strategies.encode_supports(model, image, mask, calibration=None).logit_offsets is None
    off = CalibrationConfig(enabled=False)
    assert strategies.encode_supports(model, image, mask, calibration=off).logit_offsets is None
    coarse = F.interpolate(image, size=model.config.image_size, mode="area")
    coarse_mask = (F.interpolate(mask, size=model.config.image_size, mode="area") > 0).float()
    assert strategies.encode_supports(model, coarse, coarse_mask).logit_offsets is None


def test_the_offsets_enter_the_prediction_and_survive_bytes_select_and_tuning(model: IrisModel) -> None:
    image, mask = _fine_support(model)
    plain = strategies.encode_supports(model, image, mask, ["line"], calibration=None)
    offsets = offsets_of(torch.tensor([0.8]))
    shifted = TaskEmbedding(plain.tokens, plain.class_names, plain.model_version, plain.support_pixels, offsets)
    torch.testing.assert_close(strategies.predict_probabilities(model, image, shifted),
                               apply_offsets(strategies.predict_probabilities(model, image, plain), offsets))
    restored = TaskEmbedding.from_bytes(shifted.to_bytes())
    torch.testing.assert_close(restored.logit_offsets, offsets)
    assert plain.thresholds() is None and restored.thresholds() == pytest.approx([0.8])
    torch.testing.assert_close(restored.select(["line"]).logit_offsets, offsets)
    tuned = strategies.in_context_tuning(model, image, mask, image, ["line"], InferenceConfig(), steps=1)
    assert tuned.embedding.logit_offsets is not None
    untuned = strategies.in_context_tuning(model, image, mask, image, ["line"],
                                           InferenceConfig(calibration=CalibrationConfig(enabled=False)), steps=1)
    assert untuned.embedding.logit_offsets is None


def test_the_calibrated_support_reproduces_its_mask_at_least_as_well(model: IrisModel) -> None:
    image, mask = _fine_support(model)
    plain = strategies.encode_supports(model, image, mask, calibration=None)
    fitted = strategies.encode_supports(model, image, mask, calibration=CalibrationConfig(dead_zone=0.0))

    def dice(embedding: TaskEmbedding) -> float:
        predicted = strategies.predict_probabilities(model, image, embedding) >= 0.5
        return float(2 * (predicted & (mask >= 0.5)).sum() / (predicted.sum() + mask.sum()).clamp(min=1))

    assert dice(fitted) >= dice(plain)
