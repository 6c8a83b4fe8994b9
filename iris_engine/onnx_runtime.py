"""ONNX Runtime for the query path (encoder + mask decoder, the graph of `export.py`).

Where the CPU lacks native bfloat16 (else the default is the "bf16" backend, `native_bf16`), it runs a stack of
slices about 1.5x faster than eager float32 PyTorch (benchmarks/results.md, benchmarks/bf16.md). A session is
built in memory once per model and query size (the model's input size, or twice it for a thin structure,
`input_scale.py`; a few seconds) and rebuilt when the model's weights change; in-context tuning and anything else
that needs gradients stays on PyTorch.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import weakref
from pathlib import Path

import torch

from iris_engine.config import InferenceConfig
from iris_engine.errors import IrisInputError
from iris_engine.export import export_onnx, onnx_session, run_onnx
from iris_engine.input_scale import FINE_SCALE
from iris_engine.model.iris import IrisModel
from iris_engine.precision import native_bf16

BACKENDS = ("auto", "eager", "bf16", "onnx")
LOG = logging.getLogger(__name__)


def weights_fingerprint(model: IrisModel) -> tuple[tuple[int, int], ...]:
    """Storage and in-place version counter of every weight: changes whenever a weight is loaded or updated."""
    return tuple((t.data_ptr(), t._version) for t in model.state_dict(keep_vars=True).values())


class OnnxQueryPath:
    """An ONNX Runtime session of one model's query path, for queries of one size."""

    def __init__(self, model: IrisModel, size: int):
        self.fingerprint = weights_fingerprint(model)
        with tempfile.TemporaryDirectory() as folder:
            self.session = onnx_session(export_onnx(model, Path(folder) / "query_path.onnx", size=size))

    def logits(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, *S) of model-space queries (B, 1, *S) with task tokens (K, T, C)."""
        return run_onnx(self.session, queries, tokens)


_PATHS: weakref.WeakKeyDictionary[IrisModel, dict[int, OnnxQueryPath]] = weakref.WeakKeyDictionary()
_FAILED: weakref.WeakSet[IrisModel] = weakref.WeakSet()
_LOCK = threading.Lock()


def session_sizes(model: IrisModel) -> tuple[int, ...]:
    """Query sides with an ONNX session: the model's input size, and twice it for a 2D model (thin structures)."""
    size = model.config.image_size
    return (size, FINE_SCALE * size) if model.config.spatial_dims == 2 else (size,)


def query_path(model: IrisModel, size: int | None = None) -> OnnxQueryPath:
    """The model's ONNX Runtime session for queries of side `size` (default its input size), built on first use
    and rebuilt after its weights changed."""
    side = size or model.config.image_size
    if side not in session_sizes(model):
        raise IrisInputError(f"no ONNX query path for {side} px queries; sizes: {session_sizes(model)}")
    with _LOCK:
        paths = _PATHS.setdefault(model, {})
        path = paths.get(side)
        if path is None or path.fingerprint != weights_fingerprint(model):
            path = OnnxQueryPath(model, side)
            paths[side] = path
        return path


def choose_backend(config: InferenceConfig, model: IrisModel, queries: torch.Tensor) -> str:
    """'eager', 'bf16' or 'onnx' for a stack of model-space queries: 'auto' takes bf16 on a CPU with native
    bfloat16 (unless `config.cpu_bf16` is off), else ONNX Runtime for CPU stacks of at least
    `config.onnx_min_queries` slices (a volume), where building the session once pays off."""
    if config.backend not in BACKENDS:
        raise IrisInputError(f"unknown inference backend '{config.backend}'; choose one of {', '.join(BACKENDS)}")
    if config.backend != "auto":
        return config.backend
    on_cpu = config.device == "cpu" and next(model.parameters()).device.type == "cpu"
    if on_cpu and config.cpu_bf16 and native_bf16():
        return "bf16"
    big = queries.shape[0] >= config.onnx_min_queries
    side = queries.shape[-1]
    model_space = side in session_sizes(model) and all(s == side for s in queries.shape[2:])
    if not (on_cpu and big and model_space) or model in _FAILED:
        return "eager"
    try:
        query_path(model, side)
    except Exception as error:  # noqa: BLE001 - any export or runtime failure falls back to PyTorch
        LOG.warning("ONNX Runtime unavailable for this model, using PyTorch: %s", error)
        _FAILED.add(model)
        return "eager"
    return "onnx"
