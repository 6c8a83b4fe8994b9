"""ONNX Runtime and TorchScript give PyTorch's logits for the exported query path (dynamic batch and classes)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from iris_engine.config import ModelConfig
from iris_engine.errors import IrisInputError
from iris_engine.export import SegmentPath, example_inputs, export_model, run_exported
from iris_engine.model.iris import IrisModel

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=64, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)
TINY_V2 = ModelConfig(encoder_channels=(8, 16, 32), image_size=64, decoder_channels=8, num_heads=2,
                      task_encoder_layers=1, decoder_layers=1, similarity_path=True, prior_size=16,
                      histogram_bins=8, region_grid=2)
TINY_V2_FINE = replace(TINY_V2, fine_class_path=True)


@pytest.fixture(scope="module", params=[TINY, TINY_V2, TINY_V2_FINE],
                ids=["v1", "v2_support_context", "v2_fine_class_path"])
def model(request) -> IrisModel:
    torch.manual_seed(0)
    return IrisModel(request.param).eval()


def test_segment_path_equals_model_segment(model):
    image, tokens = example_inputs(model, batch=2, classes=3)
    with torch.no_grad():
        torch.testing.assert_close(SegmentPath(model)(image, tokens), model.segment(image, tokens))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_logits_match_pytorch(model, tmp_path, fmt):
    path = export_model(model, tmp_path / f"tiny.{fmt}", fmt)
    for batch, classes in ((1, 1), (5, 3)):  # traced with (2, 1): both axes must stay free
        image, tokens = example_inputs(model, batch, classes)
        with torch.no_grad():
            expected = model.segment(image, tokens)
        logits = run_exported(path, fmt, image, tokens)
        assert logits.shape == (batch, classes, 64, 64)
        torch.testing.assert_close(logits, expected, atol=1e-3, rtol=0)


def test_unknown_format_is_refused(model, tmp_path):
    with pytest.raises(IrisInputError, match="unknown export format"):
        export_model(model, tmp_path / "m", "tflite")
