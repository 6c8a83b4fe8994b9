"""Export the query path of IrisModel (encoder + mask decoder, task tokens as an input) to ONNX or TorchScript.

The task encoder is not exported: it computes its pooling weights with `torch.autograd.grad`
(`full_resolution_pooling_weights`). Task tokens come from `IrisSegmenter.encode`, a memory bank
or in-context tuning and are fed to the exported graph as an input. The graph holds the model alone: a thin
structure's support-correspondence vote and calibrated logit offsets (`TaskEmbedding.support_pixels`,
`TaskEmbedding.logit_offsets`) are applied outside it, as `strategies.predict_probabilities` does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from iris_engine.errors import IrisInputError
from iris_engine.model.iris import IrisModel

EXPORT_FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
INPUT_NAMES = ("query_image", "task_tokens")
OUTPUT_NAME = "logits"


class SegmentPath(nn.Module):
    """forward(query_image (B, 1, *S), task_tokens (K, T, C)) -> logits (B, K, *S)."""

    def __init__(self, model: IrisModel):
        super().__init__()
        self.encoder = model.encoder
        self.decoder = model.decoder

    def forward(self, query_image: torch.Tensor, task_tokens: torch.Tensor) -> torch.Tensor:
        """Logits of every class for every query image; the same tokens serve the whole batch."""
        tokens = task_tokens.unsqueeze(0).expand(query_image.shape[0], -1, -1, -1)
        return self.decoder(query_image, self.encoder(query_image), tokens)


@contextmanager
def _tracing() -> Iterator[None]:
    """No grad, no tracer warnings, and MultiheadAttention off its fused fast path (no ONNX symbolic for it)."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation notices of the legacy exporters
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def example_inputs(model: IrisModel, batch: int = 2, classes: int = 1, size: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random query images (side `size`, default the model's input size) and task tokens of the shapes the
    exported graph takes."""
    config = model.config
    device = next(model.parameters()).device
    side = size or config.image_size
    image = torch.randn(batch, config.in_channels, *(side,) * config.spatial_dims, device=device)
    tokens = torch.randn(classes, config.num_task_tokens, config.embed_dim, device=device)
    return image, tokens


def export_onnx(model: IrisModel, path: str | Path, opset: int = ONNX_OPSET, size: int | None = None) -> Path:
    """ONNX graph with dynamic batch (B) and class (K) axes for queries of side `size` (default the model's input
    size; TorchScript-based exporter, no onnxscript needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = SegmentPath(model).eval()
    dynamic_axes = {"query_image": {0: "batch"}, "task_tokens": {0: "classes"}, OUTPUT_NAME: {0: "batch", 1: "classes"}}
    with _tracing():
        torch.onnx.export(
            module, example_inputs(model, size=size), str(path), input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False,
        )
    return path


def export_torchscript(model: IrisModel, path: str | Path) -> Path:
    """Traced TorchScript module (batch size and class count stay free: shapes are read at run time)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = SegmentPath(model).eval()
    with _tracing():
        traced = torch.jit.trace(module, example_inputs(model), check_trace=False)
    traced.save(str(path))
    return path


def export_model(model: IrisModel, path: str | Path, fmt: str) -> Path:
    """Export to `fmt` ('onnx' or 'torchscript')."""
    if fmt == "onnx":
        return export_onnx(model, path)
    if fmt == "torchscript":
        return export_torchscript(model, path)
    raise IrisInputError(f"unknown export format '{fmt}'; choose one of {', '.join(EXPORT_FORMATS)}")


def onnx_session(path: str | Path) -> Any:
    """A CPU ONNX Runtime session of an exported query path, with as many threads as torch uses."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, query_image: torch.Tensor, task_tokens: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, *S) of an ONNX Runtime session for query images (B, 1, *S) and task tokens (K, T, C)."""
    inputs = (query_image.detach().cpu().numpy(), task_tokens.detach().cpu().numpy())
    return torch.from_numpy(session.run([OUTPUT_NAME], dict(zip(INPUT_NAMES, inputs, strict=True)))[0])


def run_exported(path: str | Path, fmt: str, query_image: torch.Tensor, task_tokens: torch.Tensor) -> torch.Tensor:
    """Logits from an exported file: ONNX Runtime (CPU) for ONNX, torch.jit.load for TorchScript."""
    if fmt == "onnx":
        return run_onnx(onnx_session(path), query_image, task_tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(query_image.cpu(), task_tokens.cpu())


def max_abs_difference(model: IrisModel, path: str | Path, fmt: str, batch: int = 3, classes: int = 2) -> float:
    """Largest |logit| difference between the exported file and PyTorch on random inputs (other B and K than traced)."""
    image, tokens = example_inputs(model, batch, classes)
    with torch.no_grad():
        reference = model.segment(image, tokens).cpu()
    return float((run_exported(path, fmt, image, tokens) - reference).abs().max())
