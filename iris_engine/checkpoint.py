"""Checkpoints: model config + weights + memory bank (+ training state), safe to load from strangers.

Files are read with `torch.load(weights_only=True)` (no code execution) and carry a SHA-256 of their
config and weights, so a tampered or truncated file is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iris_engine.config import CHECKPOINT_FORMAT_VERSION, ModelConfig
from iris_engine.errors import CheckpointError
from iris_engine.memory_bank import MemoryBank
from iris_engine.model.click_refiner import ClickRefiner, ClickRefinerConfig
from iris_engine.model.iris import IrisModel


@dataclass
class LoadedCheckpoint:
    model: IrisModel
    memory_bank: MemoryBank
    training_state: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def weights_digest(config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the config and every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: IrisModel,
    memory_bank: MemoryBank | None = None,
    training_state: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Atomic save (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_config": config,
        "state_dict": state,
        "digest": weights_digest(config, state),
        "memory_bank": (memory_bank or MemoryBank()).state_dict(),
        "training_state": training_state or {},
        "metadata": metadata or {},
    }
    return _atomic_save(payload, path)


def _atomic_save(payload: dict[str, Any], path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _one_line(error: Exception) -> str:
    """The gist of torch's multi-line load errors in one line (never its advice to load untrusted code)."""
    text = str(error)
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsafe:
        return f"it asks to run {unsafe.group(1)}, which a checkpoint never needs; it was not run"
    joined = " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(error).__name__
    return joined.split(". ")[0].rstrip(".")[:200]


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", expected: ModelConfig | None = None
) -> LoadedCheckpoint:
    """Load and verify a checkpoint; refuse tampered, foreign or mismatched files with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise CheckpointError(f"{path.name} is not a loadable IRIS checkpoint (corrupt or unsafe): "
                              f"{_one_line(error)}") from error
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise CheckpointError(f"{path.name} is not an IRIS checkpoint (no format version)")
    if payload["format_version"] != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path.name} has checkpoint format {payload['format_version']}, "
            f"this code reads {CHECKPOINT_FORMAT_VERSION}"
        )
    config_dict = payload["model_config"]
    state = payload["state_dict"]
    if weights_digest(config_dict, state) != payload["digest"]:
        raise CheckpointError(f"{path.name} failed its integrity check: weights or config were modified")
    config = ModelConfig.from_dict(config_dict)
    if expected is not None and expected != config:
        raise CheckpointError(f"{path.name} was trained with {config}, expected {expected}")
    model = IrisModel(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{path.name} does not match the model architecture: {_one_line(error)}") from error
    model.version = str(payload["metadata"].get("model_version", payload["digest"][:12]))
    model.eval()
    return LoadedCheckpoint(
        model.to(map_location),
        MemoryBank.from_state_dict(payload["memory_bank"]),
        payload["training_state"],
        payload["metadata"],
    )

CLICK_REFINER_FILE = "click_refiner.pt"  # beside the IRIS weights it was trained on
# beside them too: the refiner for thin results read at twice the input size (`iris train-refiner --fine-thin-only`)
FINE_CLICK_REFINER_FILE = "click_refiner_fine.pt"
# and a sequential refiner for 2D results read at the input size (`iris train-refiner --sequential`)
SEQUENTIAL_CLICK_REFINER_FILE = "click_refiner_sequential.pt"


@dataclass
class LoadedClickRefiner:
    refiner: ClickRefiner
    iris_model_version: str
    metadata: dict[str, Any] = field(default_factory=dict)


def save_click_refiner(path: str | Path, refiner: ClickRefiner, iris_model_version: str,
                       metadata: dict[str, Any] | None = None) -> Path:
    """Atomic save of a click refiner, tied to the IRIS model version whose features it reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = refiner.config.to_dict()
    state = {k: v.detach().cpu() for k, v in refiner.state_dict().items()}
    payload = {"format_version": CHECKPOINT_FORMAT_VERSION, "kind": "click_refiner", "refiner_config": config,
               "state_dict": state, "digest": weights_digest(config, state), "iris_model_version": iris_model_version,
               "metadata": metadata or {}}
    return _atomic_save(payload, path)


def load_click_refiner(path: str | Path) -> LoadedClickRefiner:
    """Load and verify a click refiner file (same safety rules as IRIS checkpoints)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"click refiner weights not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise CheckpointError(f"{path.name} is not a loadable click refiner (corrupt or unsafe): "
                              f"{_one_line(error)}") from error
    if not isinstance(payload, dict) or payload.get("kind") != "click_refiner":
        raise CheckpointError(f"{path.name} is not a click refiner file")
    if weights_digest(payload["refiner_config"], payload["state_dict"]) != payload["digest"]:
        raise CheckpointError(f"{path.name} failed its integrity check: weights or config were modified")
    refiner = ClickRefiner(ClickRefinerConfig.from_dict(payload["refiner_config"]))
    refiner.load_state_dict(payload["state_dict"])
    return LoadedClickRefiner(refiner.eval(), str(payload["iris_model_version"]), payload["metadata"])
