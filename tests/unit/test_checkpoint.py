"""Checkpoints: exact round trip, integrity and safety checks."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from iris_engine.checkpoint import load_checkpoint, save_checkpoint, weights_digest
from iris_engine.config import CHECKPOINT_FORMAT_VERSION, ModelConfig
from iris_engine.errors import CheckpointError
from iris_engine.memory_bank import MemoryBank
from iris_engine.model.iris import IrisModel

TINY = ModelConfig(
    encoder_channels=(8, 16, 32), image_size=32, decoder_channels=12, num_heads=2,
    task_encoder_layers=1, decoder_layers=1, num_query_tokens=3,
)


class Arbitrary:
    """Not a tensor/container: weights_only loading must refuse it."""

    def __init__(self):
        self.value = 42


class Exploit:
    """Unpickling this would create a file (code execution)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def model() -> IrisModel:
    torch.manual_seed(3)
    return IrisModel(TINY).eval()


@pytest.fixture
def saved(tmp_path, model) -> Path:
    bank = MemoryBank(momentum=0.9)
    bank.update("toy/bright", torch.randn(4, 32))
    bank.update("toy/bright", torch.randn(4, 32))
    bank.update("toy/dark", torch.randn(4, 32))
    return save_checkpoint(
        tmp_path / "model.pt", model, bank, training_state={"iteration": 7}, metadata={"model_version": "v-test"}
    )


def _logits(model: IrisModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    image, query = torch.randn(1, 1, 32, 32, generator=g), torch.randn(2, 1, 32, 32, generator=g)
    masks = torch.zeros(1, 2, 32, 32)
    masks[0, 0, 4:12, 4:12] = 1
    masks[0, 1, 18:30, 10:20] = 1
    with torch.no_grad():
        return model.segment(query, model.encode_task(image, masks)[0])


def test_round_trip_restores_config_weights_and_bank(saved, model):
    loaded = load_checkpoint(saved)  # no hyper-parameters passed: config comes from the file
    assert loaded.model.config == TINY
    assert not loaded.model.training
    assert loaded.model.version == "v-test"
    assert loaded.training_state == {"iteration": 7}
    assert loaded.metadata["model_version"] == "v-test"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name
    assert torch.equal(_logits(model), _logits(loaded.model))
    bank = loaded.memory_bank
    assert bank.momentum == 0.9
    assert bank.class_names == ["toy/bright", "toy/dark"]
    assert (bank.count("toy/bright"), bank.count("toy/dark")) == (2, 1)
    assert not list(saved.parent.glob("*.partial"))


def test_version_defaults_to_digest_prefix(tmp_path, model):
    path = save_checkpoint(tmp_path / "plain.pt", model)
    loaded = load_checkpoint(path)
    payload = torch.load(path, weights_only=True)
    assert loaded.model.version == payload["digest"][:12]
    assert len(loaded.memory_bank) == 0


def test_flipped_bytes_are_refused(saved):
    data = bytearray(saved.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 64):
        data[i] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="integrity|corrupt"):
        load_checkpoint(saved)


def test_truncated_file_is_refused(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(saved)


def test_modified_tensor_with_old_digest_is_refused(saved):
    payload = torch.load(saved, weights_only=True)
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = payload["state_dict"][name] + 1e-3
    torch.save(payload, saved)
    with pytest.raises(CheckpointError, match="integrity"):
        load_checkpoint(saved)


def test_modified_config_with_old_digest_is_refused(saved):
    payload = torch.load(saved, weights_only=True)
    payload["model_config"]["num_heads"] = 4
    torch.save(payload, saved)
    with pytest.raises(CheckpointError, match="integrity"):
        load_checkpoint(saved)


def test_digest_is_sensitive_to_every_part():
    state = {"a": torch.zeros(3), "b": torch.ones(2, 2)}
    config = TINY.to_dict()
    base = weights_digest(config, state)
    assert base == weights_digest(config, {k: v.clone() for k, v in state.items()})
    assert base != weights_digest(config, {"a": torch.zeros(3), "b": torch.ones(4)})  # shape
    assert base != weights_digest(config, {"a": torch.zeros(3, dtype=torch.float64), "b": torch.ones(2, 2)})
    assert base != weights_digest(config, {"a2": torch.zeros(3), "b": torch.ones(2, 2)})  # name
    assert base != weights_digest({**config, "num_heads": 8}, state)


def test_wrong_format_version_is_refused(saved):
    payload = torch.load(saved, weights_only=True)
    payload["format_version"] = CHECKPOINT_FORMAT_VERSION + 1
    torch.save(payload, saved)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(saved)
    del payload["format_version"]
    torch.save(payload, saved)
    with pytest.raises(CheckpointError, match="format version"):
        load_checkpoint(saved)


def test_expected_config_mismatch_is_refused(saved):
    assert load_checkpoint(saved, expected=TINY).model.config == TINY
    other = ModelConfig(**{**TINY.__dict__, "decoder_channels": 8})
    with pytest.raises(CheckpointError, match="expected"):
        load_checkpoint(saved, expected=other)


def test_arbitrary_objects_are_refused_without_executing(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"format_version": CHECKPOINT_FORMAT_VERSION, "payload": Arbitrary()}, path)
    with pytest.raises(CheckpointError, match="unsafe"):
        load_checkpoint(path)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format_version": CHECKPOINT_FORMAT_VERSION, "x": Exploit(marker)}, evil)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    assert not marker.exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Exploit(marker), protocol=2))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_missing_and_non_checkpoint_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    plain = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), plain)
    with pytest.raises(CheckpointError, match="not an IRIS checkpoint"):
        load_checkpoint(plain)


def test_state_dict_not_matching_architecture_is_refused(saved):
    payload = torch.load(saved, weights_only=True)
    name = next(iter(payload["state_dict"]))
    del payload["state_dict"][name]
    payload["digest"] = weights_digest(payload["model_config"], payload["state_dict"])
    torch.save(payload, saved)
    with pytest.raises(CheckpointError, match="architecture"):
        load_checkpoint(saved)
