"""Whether this CPU computes bfloat16 natively: inference (`onnx_runtime.choose_backend`) and training
(`training.trainer.training_autocast`) run under bfloat16 autocast there."""

from __future__ import annotations

import functools

import torch


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN with AVX512-BF16 or AMX), where the query path under
    bfloat16 autocast runs 1.3-2x faster than in float32 at the same Dice
    (benchmarks/bf16.md) and a training step 1.6-2.0x (benchmarks/training.md)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
