"""Fine input scale for thin structures: the thickness measure, the rule, and its use in IrisSegmenter and
`iris evaluate`."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from iris_engine.config import InferenceConfig, ModelConfig
from iris_engine.correspondence import CorrespondenceConfig
from iris_engine.evaluation.harness import EvalConfig, Evaluator
from iris_engine.inference import IrisSegmenter, Support
from iris_engine.input_scale import (
    FINE_SCALE,
    choose_input_scale,
    fill_between,
    strided_slices,
    structure_thickness,
)
from iris_engine.io.volume import Volume
from iris_engine.memory_bank import MemoryBank
from iris_engine.model.iris import IrisModel
from iris_engine.strategies import query_batch_size

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)


def _masks() -> torch.Tensor:
    """(1, 2, 32, 32): a 10 x 10 square and a one-pixel line."""
    masks = torch.zeros(1, 2, 32, 32)
    masks[0, 0, 4:14, 4:14] = 1
    masks[0, 1, 20, 3:29] = 1
    return masks


def test_thickness_is_twice_area_over_boundary_as_scipy_counts_it() -> None:
    masks = _masks()
    expected = []
    for k in range(2):
        inside = masks[0, k].numpy() > 0
        expected.append(2 * inside.sum() / (inside & ~ndimage.binary_erosion(inside)).sum())
    np.testing.assert_allclose(structure_thickness(masks).numpy(), expected, rtol=1e-6)
    assert torch.isinf(structure_thickness(torch.zeros(2, 1, 8, 8))).all()


def test_only_an_all_thin_support_set_runs_at_the_fine_scale() -> None:
    limit = InferenceConfig().fine_scale_thickness
    masks = _masks()
    assert choose_input_scale(masks[:, 1:], limit) == FINE_SCALE
    assert choose_input_scale(masks[:, :1], limit) == 1
    assert choose_input_scale(masks, limit) == 1  # one thick class keeps the whole call at the input size
    assert choose_input_scale(masks[:, 1:], 0.0) == 1
    assert choose_input_scale(masks[:, 1:, None].expand(-1, -1, 4, -1, -1), limit) == 1  # 3D masks


def _image(seed: int, shape: tuple[int, int] = (48, 40)) -> Volume:
    array = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return Volume(array, np.eye(4), "MR")


@pytest.mark.parametrize(("row_slice", "expected"), [(slice(20, 21), FINE_SCALE), (slice(10, 30), 1)])
def test_segmenter_runs_a_thin_support_at_twice_the_input_size(row_slice: slice, expected: int) -> None:
    torch.manual_seed(0)
    segmenter = IrisSegmenter(IrisModel(TINY))
    mask = np.zeros((48, 40), np.uint8)
    mask[row_slice, 5:35] = 1
    seen: list[tuple[int, ...]] = []
    encode_query = segmenter.model.encode_query
    segmenter.model.encode_query = lambda images: seen.append(tuple(images.shape)) or encode_query(images)
    query = _image(2)
    result = segmenter.segment(query, "one_shot", [Support(_image(1), mask)], ["line"])
    assert result.input_scale == expected
    assert seen and all(shape[-1] == TINY.image_size * expected for shape in seen)
    assert result.probabilities.shape == result.masks.shape == (1, 48, 40)
    segmenter.memory_bank.update_from_embedding(result.embedding)
    seen.clear()
    retrieved = segmenter.segment(query, "memory_bank", [], ["line"])
    assert retrieved.input_scale == 1 and all(shape[-1] == TINY.image_size for shape in seen)



def test_strided_slices_keep_both_ends_and_fill_between_is_linear_in_z() -> None:
    assert strided_slices(10, 3) == [0, 3, 6, 9]
    assert strided_slices(8, 3) == [0, 3, 6, 7]
    assert strided_slices(5, 1) == [0, 1, 2, 3, 4]
    assert strided_slices(1, 3) == [0]
    values = torch.tensor([[0.0, 1.0], [3.0, 1.0], [6.0, 4.0], [7.0, 0.0]])  # slices 0, 3, 6, 7 of 8
    filled = fill_between(values, [0, 3, 6, 7], 8)
    np.testing.assert_allclose(filled[:, 0].numpy(), np.arange(8.0))
    np.testing.assert_allclose(filled[:, 1].numpy(), [1, 1, 1, 1, 2, 3, 4, 0])
    assert fill_between(values, [0, 1, 2, 3], 4) is values
    with pytest.raises(ValueError, match="stride"):
        strided_slices(4, 0)
    with pytest.raises(ValueError, match="fine_volume_stride"):
        InferenceConfig(fine_volume_stride=0)


def test_a_thin_structures_volume_is_segmented_on_every_third_slice_and_interpolated_between() -> None:
    torch.manual_seed(0)
    segmenter = IrisSegmenter(IrisModel(TINY))
    mask = np.zeros((48, 40), np.uint8)
    mask[20, 5:35] = 1
    support = [Support(_image(1), mask)]
    volume = Volume(np.random.default_rng(3).normal(size=(48, 40, 8)).astype(np.float32), np.eye(4), "MR")
    segmenter.encode_at_input_scale(support, ["line"])  # cached: what follows encodes the query slices only
    seen: list[int] = []
    encode_query = segmenter.model.encode_query
    segmenter.model.encode_query = lambda images: seen.append(images.shape[0]) or encode_query(images)
    strided = segmenter.segment(volume, "one_shot", support, ["line"])
    assert strided.input_scale == FINE_SCALE and strided.slice_stride == 3
    assert sum(seen) == 4 and max(seen) == InferenceConfig().fine_batch_size  # slices 0, 3, 6, 7, one at a time
    segmenter.config = replace(segmenter.config, fine_volume_stride=1)
    every = segmenter.segment(volume, "one_shot", support, ["line"])
    assert every.slice_stride == 1
    kept = [0, 3, 6, 7]
    np.testing.assert_allclose(strided.probabilities[..., kept], every.probabilities[..., kept], atol=1e-5)
    between = every.probabilities[..., 0] + (every.probabilities[..., 3] - every.probabilities[..., 0]) / 3
    np.testing.assert_allclose(strided.probabilities[..., 1], between, atol=1e-5)
    thick = np.zeros((48, 40), np.uint8)
    thick[10:30, 5:35] = 1
    segmenter.config = InferenceConfig()
    assert segmenter.segment(volume, "one_shot", [Support(_image(1), thick)], ["blob"]).slice_stride == 1
    assert segmenter.segment(_image(2), "one_shot", support, ["line"]).slice_stride == 1  # a 2D image


@pytest.mark.parametrize(("slice_mm", "stride"), [(1.0, 3), (2.5, 3), (3.0, 2), (5.0, 1)])
def test_the_slices_read_lie_at_most_the_validated_gap_apart(slice_mm: float, stride: int) -> None:
    segmenter = IrisSegmenter(IrisModel(TINY))
    affine = np.diag([0.8, 0.8, slice_mm, 1.0])[:, [0, 2, 1, 3]]  # the slice axis stored second: coronal order
    volume = Volume(np.zeros((16, 10, 12), np.float32), affine, "CT")
    assert segmenter.slice_stride(volume, FINE_SCALE) == stride
    assert segmenter.slice_stride(volume, 1) == 1


def test_only_queries_read_at_twice_the_input_size_by_pytorch_on_the_cpu_go_one_at_a_time() -> None:
    model, config = IrisModel(TINY), InferenceConfig(batch_size=8, fine_batch_size=1)
    fine = torch.zeros(4, 1, 2 * TINY.image_size, 2 * TINY.image_size)
    plain = torch.zeros(4, 1, TINY.image_size, TINY.image_size)
    assert query_batch_size(model, fine, config, "bf16") == query_batch_size(model, fine, config, "eager") == 1
    assert query_batch_size(model, fine, config, "onnx") == 8
    assert query_batch_size(model, plain, config, "bf16") == 8
    assert query_batch_size(model, fine, replace(config, device="cuda"), "eager") == 8

def test_memory_bank_retrieves_a_class_with_a_fine_entry_at_twice_the_input_size() -> None:
    torch.manual_seed(0)
    segmenter = IrisSegmenter(IrisModel(TINY))  # the support-correspondence vote off: the bank keeps tokens only
    segmenter.config = replace(segmenter.config, correspondence=CorrespondenceConfig(weight=0.0))
    mask = np.zeros((48, 40), np.uint8)
    mask[20, 5:35] = 1
    support, query = [Support(_image(1), mask)], _image(2)
    one_shot = segmenter.segment(query, "one_shot", support, ["line"])
    assert one_shot.input_scale == FINE_SCALE
    segmenter.memory_bank.update("line", segmenter.encode(support, ["line"]).tokens[0],
                                 fine_tokens=one_shot.embedding.tokens[0])
    retrieved = segmenter.segment(query, "memory_bank", [], ["line"])
    assert retrieved.input_scale == FINE_SCALE
    np.testing.assert_allclose(retrieved.probabilities, one_shot.probabilities, atol=1e-5)
    segmenter.config = replace(segmenter.config, fine_scale_thickness=0.0)  # off: the coarse entry at 1x
    assert segmenter.bank_embedding(["line"])[1] == 1


def test_evaluation_takes_thin_supports_from_the_fine_bank_grid() -> None:
    """A bank at twice the model's size: thin supports are used as they are, others averaged down."""

    class Bank:
        images = torch.zeros(4, 64, 64)

    evaluator = Evaluator(IrisModel(TINY), MemoryBank(), Bank(), None, EvalConfig())  # type: ignore[arg-type]
    images, queries = torch.rand(1, 1, 64, 64), torch.rand(3, 1, 64, 64)
    line, block = torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)
    line[..., 30:32, 4:60] = 1
    block[..., 10:40, 10:40] = 1
    fine = evaluator.inputs(images, line, queries)
    assert [t.shape[-1] for t in fine] == [64, 64, 64]
    coarse = evaluator.inputs(images, block, queries)
    assert [t.shape[-1] for t in coarse] == [32, 32, 32]
    assert torch.allclose(coarse[2], torch.nn.functional.avg_pool2d(queries, 2))
    assert evaluator.score_grid(torch.rand(3, 32, 32)).shape == (3, 64, 64)
    evaluator.memory_bank.update("d/line", torch.rand(3, 8), fine_tokens=torch.rand(3, 8))
    evaluator.memory_bank.update("d/block", torch.rand(3, 8))
    assert evaluator.bank_scale("d/line") == FINE_SCALE and evaluator.bank_scale("d/block") == 1
