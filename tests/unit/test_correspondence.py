"""The support-correspondence vote at the fine input scale: its k-NN algebra, the band it is limited to, the
sampling of support pixels, and how the task embedding carries them through the strategies; the same for the
support calibration of those reads (its algebra: test_calibration.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from iris_engine import onnx_runtime, strategies
from iris_engine.calibration import CalibrationConfig, apply_offsets, offsets_of
from iris_engine.config import InferenceConfig, ModelConfig
from iris_engine.correspondence import CorrespondenceConfig, band, blend, sample_support_pixels, vote
from iris_engine.embedding import TaskEmbedding
from iris_engine.errors import IrisInputError
from iris_engine.input_scale import FINE_SCALE
from iris_engine.model.iris import IrisModel

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)


@pytest.fixture(autouse=True)
def float32(monkeypatch):
    monkeypatch.setattr(onnx_runtime, "native_bf16", lambda: False)


def _line_mask(size: int) -> torch.Tensor:
    """(1, 1, size, size): a two-pixel-wide horizontal line, the kind of support read at the fine scale."""
    mask = torch.zeros(1, 1, size, size)
    mask[0, 0, size // 2 : size // 2 + 2, 2 : size - 2] = 1
    return mask


def test_support_as_query_votes_back_its_own_mask_when_every_pixel_is_kept() -> None:
    features = torch.randn(1, 6, 24, 24, generator=torch.Generator().manual_seed(0))
    mask = _line_mask(24)
    support = sample_support_pixels(features, mask, CorrespondenceConfig(samples=24 * 24))
    votes = vote(features, support, torch.ones_like(mask, dtype=torch.bool))
    assert torch.equal(votes >= 0.5, mask >= 0.5)


def test_several_classes_and_queries_are_voted_each_on_its_own() -> None:
    g = torch.Generator().manual_seed(5)
    features, queries = torch.randn(1, 4, 16, 16, generator=g), torch.randn(3, 4, 16, 16, generator=g)
    masks = torch.cat([_line_mask(16), _line_mask(16).transpose(-1, -2)], dim=1)
    support = sample_support_pixels(features, masks, CorrespondenceConfig(samples=32))
    where = torch.rand(3, 2, 16, 16, generator=g) > 0.5
    votes = vote(queries, support, where)
    assert votes.shape == (3, 2, 16, 16) and (votes[~where] == 0).all()
    for i in range(3):
        for k in range(2):
            alone = vote(queries[i : i + 1], support.select([k]), where[i : i + 1, k : k + 1])
            torch.testing.assert_close(votes[i : i + 1, k : k + 1], alone)


def test_top_k_mean_matches_a_direct_computation() -> None:
    g = torch.Generator().manual_seed(1)
    features, query = torch.randn(1, 5, 16, 16, generator=g), torch.randn(1, 5, 16, 16, generator=g)
    mask = _line_mask(16)
    config = CorrespondenceConfig(samples=8, top_k=3, temperature=0.2)
    support = sample_support_pixels(features, mask, config)
    votes = vote(query, support, torch.ones_like(mask, dtype=torch.bool))
    unit = F.normalize(query[0].flatten(1).T, dim=1)
    gap = ((unit @ support.foreground[0].T).topk(3, dim=1).values.mean(1)
           - (unit @ support.background[0].T).topk(3, dim=1).values.mean(1))
    torch.testing.assert_close(votes.flatten(), torch.sigmoid(gap / 0.2))


def test_blend_changes_the_probability_only_within_the_band() -> None:
    g = torch.Generator().manual_seed(2)
    features, query = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 4, 32, 32, generator=g)
    config = CorrespondenceConfig(band=2, band_threshold=0.5)
    probability = torch.zeros(1, 1, 32, 32)
    probability[0, 0, 10, 10] = 0.9
    near = band(probability, config)
    assert near.sum() == 25 and near[0, 0, 8:13, 8:13].all()
    mixed = blend(probability, query, sample_support_pixels(features, _line_mask(32), config))
    assert torch.equal(mixed[~near], probability[~near])
    assert not torch.equal(mixed[near], probability[near])
    assert mixed.min() >= 0 and mixed.max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the vote's device handling)")
def test_blend_stays_on_the_device_of_its_inputs() -> None:
    g = torch.Generator().manual_seed(6)
    features, query = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 4, 32, 32, generator=g)
    probability = torch.rand(1, 1, 32, 32, generator=g)
    support = sample_support_pixels(features, _line_mask(32), CorrespondenceConfig())
    on_cpu = blend(probability, query, support)
    on_gpu = blend(probability.cuda(), query.cuda(), support.to("cuda"))
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu)


def test_sharpening_keeps_the_mask_and_pushes_probabilities_away_from_one_half() -> None:
    g = torch.Generator().manual_seed(4)
    features, query = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 4, 32, 32, generator=g)
    probability = torch.rand(1, 1, 32, 32, generator=g)
    soft, sharp = (blend(probability, query, sample_support_pixels(features, _line_mask(32),
                                                                   CorrespondenceConfig(sharpness=s)))
                   for s in (1.0, 6.0))
    assert torch.equal(soft >= 0.5, sharp >= 0.5)
    assert ((sharp - 0.5).abs() >= (soft - 0.5).abs() - 1e-6).all()
    assert ((sharp > 0.2) & (sharp < 0.5)).sum() < ((soft > 0.2) & (soft < 0.5)).sum()


def test_sampling_repeats_scarce_pixels_and_refuses_an_empty_class() -> None:
    features = torch.randn(1, 3, 8, 8)
    mask = torch.zeros(1, 2, 8, 8)
    mask[0, 0, 2, 2:5] = 1  # three foreground pixels
    with pytest.raises(IrisInputError, match="class index 1"):
        sample_support_pixels(features, mask, CorrespondenceConfig(samples=16))
    support = sample_support_pixels(features, mask[:, :1], CorrespondenceConfig(samples=16))
    assert support.foreground.shape == support.background.shape == (1, 16, 3)
    assert len({tuple(row.tolist()) for row in support.foreground[0]}) == 3
    torch.testing.assert_close(support.foreground.norm(dim=-1), torch.ones(1, 16))


@pytest.mark.parametrize("changes", [{"weight": 1.5}, {"temperature": 0.0}, {"top_k": 0}, {"samples": 0},
                                     {"sharpness": 0.0}])
def test_config_rejects_impossible_settings(changes: dict) -> None:
    with pytest.raises(IrisInputError):
        CorrespondenceConfig(**changes)


@pytest.fixture(scope="module")
def model() -> IrisModel:
    torch.manual_seed(0)
    return IrisModel(TINY).eval()


def _fine_support(model: IrisModel) -> tuple[torch.Tensor, torch.Tensor]:
    size = FINE_SCALE * model.config.image_size
    image = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(3))
    mask = _line_mask(size)
    return image + 2 * mask, mask


def test_only_supports_at_the_fine_scale_keep_pixels_and_calibrate(model: IrisModel) -> None:
    image, mask = _fine_support(model)
    fine = strategies.encode_supports(model, image, mask)
    assert fine.support_pixels is not None and fine.logit_offsets is not None and fine.logit_offsets.shape == (1,)
    off = CorrespondenceConfig(weight=0.0)
    assert strategies.encode_supports(model, image, mask, correspondence=off).support_pixels is None
    assert strategies.encode_supports(model, image, mask, calibration=None).logit_offsets is None
    disabled = CalibrationConfig(enabled=False)
    assert strategies.encode_supports(model, image, mask, calibration=disabled).logit_offsets is None
    coarse = F.interpolate(image, size=model.config.image_size, mode="area")
    coarse_mask = (F.interpolate(mask, size=model.config.image_size, mode="area") > 0).float()
    coarse_embedding = strategies.encode_supports(model, coarse, coarse_mask)
    assert coarse_embedding.support_pixels is None and coarse_embedding.logit_offsets is None


def test_embedding_with_support_pixels_survives_bytes_select_and_tuning(model: IrisModel) -> None:
    image, mask = _fine_support(model)
    embedding = strategies.encode_supports(model, image, mask, ["line"])
    restored = TaskEmbedding.from_bytes(embedding.to_bytes())
    assert restored.support_pixels is not None and restored.support_pixels.config == embedding.support_pixels.config
    torch.testing.assert_close(restored.support_pixels.foreground, embedding.support_pixels.foreground)
    assert restored.select(["line"]).support_pixels is not None
    tuned = strategies.in_context_tuning(model, image, mask, image, ["line"], InferenceConfig(), steps=1)
    assert tuned.embedding.support_pixels is not None


@pytest.mark.parametrize("backend", ["eager", "onnx"])
def test_the_vote_enters_the_prediction_on_every_backend(model: IrisModel, backend: str) -> None:
    image, mask = _fine_support(model)
    queries = torch.cat([image, torch.flip(image, dims=[-1])])
    with_vote = strategies.encode_supports(model, image, mask, calibration=None)
    without = TaskEmbedding(with_vote.tokens, with_vote.class_names)
    voted = strategies.predict_probabilities(model, queries, with_vote, 2, backend)
    plain = strategies.predict_probabilities(model, queries, without, 2, "eager")
    near = band(plain, with_vote.support_pixels.config)
    assert near.any() and not torch.allclose(voted[near], plain[near])
    torch.testing.assert_close(voted[~near], plain[~near])


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
