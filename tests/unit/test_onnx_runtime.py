"""The ONNX Runtime query path: chosen for CPU volumes, same probabilities as PyTorch, rebuilt when weights change."""

from __future__ import annotations

import pytest
import torch

from iris_engine import onnx_runtime, strategies
from iris_engine.config import InferenceConfig, ModelConfig
from iris_engine.embedding import TaskEmbedding
from iris_engine.errors import IrisInputError
from iris_engine.model.iris import IrisModel

TINY_V2 = ModelConfig(encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
                      task_encoder_layers=1, decoder_layers=1, similarity_path=True, prior_size=8,
                      histogram_bins=8, region_grid=2)


def tiny(seed: int) -> IrisModel:
    torch.manual_seed(seed)
    return IrisModel(TINY_V2).eval()


def embedding_of(model: IrisModel, classes: int = 2) -> TaskEmbedding:
    torch.manual_seed(5)
    image = torch.randn(1, 1, 32, 32)
    masks = torch.zeros(1, classes, 32, 32)
    for k in range(classes):
        masks[0, k, 4 + 8 * k : 12 + 8 * k, 6:20] = 1
    return strategies.encode_supports(model, image, masks)


def test_auto_takes_bf16_on_a_cpu_with_native_bfloat16_unless_float32_is_asked(monkeypatch):
    model = tiny(0)
    monkeypatch.setattr(onnx_runtime, "native_bf16", lambda: True)
    assert onnx_runtime.choose_backend(InferenceConfig(), model, torch.zeros(1, 1, 32, 32)) == "bf16"
    assert onnx_runtime.choose_backend(InferenceConfig(onnx_min_queries=1), model, torch.zeros(9, 1, 64, 64)) == "bf16"
    assert onnx_runtime.choose_backend(InferenceConfig(cpu_bf16=False), model, torch.zeros(1, 1, 32, 32)) == "eager"
    monkeypatch.setattr(onnx_runtime, "native_bf16", lambda: False)
    assert onnx_runtime.choose_backend(InferenceConfig(), model, torch.zeros(1, 1, 32, 32)) == "eager"


def by_backend(backend: str, count: int, batch_size: int
               ) -> tuple[IrisModel, TaskEmbedding, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tiny model, its embedding, `count` random queries, and their probabilities on eager PyTorch and `backend`."""
    model = tiny(0)
    embedding = embedding_of(model)
    queries = torch.randn(count, 1, 32, 32)
    eager, other = (strategies.predict_probabilities(model, queries, embedding, batch_size=batch_size, backend=name)
                    for name in ("eager", backend))
    return model, embedding, queries, eager, other


def test_bf16_probabilities_stay_close_to_float32():
    _, _, _, eager, bf16 = by_backend("bf16", 5, 2)
    assert bf16.dtype == torch.float32 and bf16.shape == eager.shape
    assert not torch.equal(bf16, eager)  # it did run in bfloat16
    torch.testing.assert_close(bf16, eager, atol=0.03, rtol=0.0)


def test_auto_takes_onnx_for_a_volume_and_pytorch_for_a_few_slices():
    model = tiny(0)
    config = InferenceConfig(onnx_min_queries=6, cpu_bf16=False)
    assert onnx_runtime.choose_backend(config, model, torch.zeros(5, 1, 32, 32)) == "eager"
    assert onnx_runtime.choose_backend(config, model, torch.zeros(6, 1, 32, 32)) == "onnx"
    assert onnx_runtime.choose_backend(config, model, torch.zeros(6, 1, 64, 64)) == "onnx"  # a thin structure's 2x
    assert onnx_runtime.choose_backend(config, model, torch.zeros(6, 1, 48, 48)) == "eager"  # not model space
    assert onnx_runtime.choose_backend(InferenceConfig(backend="eager", onnx_min_queries=1), model,
                                       torch.zeros(9, 1, 32, 32)) == "eager"
    with pytest.raises(IrisInputError, match="unknown inference backend"):
        onnx_runtime.choose_backend(InferenceConfig(backend="tensorrt"), model, torch.zeros(1, 1, 32, 32))


def test_onnx_probabilities_equal_pytorch():
    model, embedding, queries, eager, onnx = by_backend("onnx", 7, 3)
    assert onnx.shape == eager.shape == (7, 2, 32, 32)
    torch.testing.assert_close(onnx, eager, atol=1e-4, rtol=1e-4)
    result = strategies.segment_with_embedding(model, queries, embedding,
                                               InferenceConfig(onnx_min_queries=4, cpu_bf16=False))
    torch.testing.assert_close(result.probabilities, eager, atol=1e-4, rtol=1e-4)


def test_queries_at_twice_the_input_size_get_their_own_session_with_pytorch_probabilities():
    model = tiny(0)
    embedding = embedding_of(model)
    queries = torch.randn(3, 1, 64, 64)
    eager = strategies.predict_probabilities(model, queries, embedding, backend="eager")
    onnx = strategies.predict_probabilities(model, queries, embedding, backend="onnx")
    assert onnx.shape == eager.shape == (3, 2, 64, 64)
    torch.testing.assert_close(onnx, eager, atol=1e-4, rtol=1e-4)
    assert onnx_runtime.query_path(model, 64) is not onnx_runtime.query_path(model)
    with pytest.raises(IrisInputError, match="no ONNX query path for 48 px"):
        onnx_runtime.query_path(model, 48)


def test_the_session_follows_new_weights():
    model, other = tiny(0), tiny(1)
    queries = torch.randn(4, 1, 32, 32)
    first = onnx_runtime.query_path(model)
    assert onnx_runtime.query_path(model) is first  # built once
    model.load_state_dict(other.state_dict())
    embedding = embedding_of(model)
    onnx = strategies.predict_probabilities(model, queries, embedding, backend="onnx")
    assert onnx_runtime.query_path(model) is not first
    torch.testing.assert_close(onnx, strategies.predict_probabilities(other, queries, embedding), atol=1e-4,
                               rtol=1e-4)
