"""`iris average-weights`: uniform weight average of fine-tunes, memory bank rebuilt, clear refusals."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from iris_engine.checkpoint import load_checkpoint, load_click_refiner, save_checkpoint, save_click_refiner
from iris_engine.data.splits import make_split
from iris_engine.errors import IrisInputError
from iris_engine.model.click_refiner import ClickRefiner, ClickRefinerConfig
from iris_engine.model.iris import IrisModel
from iris_engine.training.soup import average_models, main
from tests.unit.test_data_msd_split_bank import _write_msd
from tests.unit.test_trainer import TINY


def _model(seed: int) -> IrisModel:
    torch.manual_seed(seed)
    return IrisModel(TINY)


def test_the_average_is_the_mean_of_every_weight() -> None:
    a, b = _model(1), _model(2)
    expected = {k: (v + b.state_dict()[k]) / 2 for k, v in a.state_dict().items() if v.is_floating_point()}
    averaged = average_models([_model(1), _model(2)])
    for key, value in expected.items():
        assert torch.allclose(averaged.state_dict()[key], value)
    assert not torch.equal(averaged.state_dict()[key], a.state_dict()[key])


def test_models_of_other_configurations_or_a_single_one_are_refused() -> None:
    with pytest.raises(IrisInputError, match="at least two"):
        average_models([_model(1)])
    with pytest.raises(IrisInputError, match="different model configurations"):
        average_models([_model(1), IrisModel(replace(TINY, decoder_channels=16))])


def test_the_command_writes_the_average_with_a_rebuilt_memory_bank(tmp_path: Path) -> None:
    _write_msd(tmp_path, "toy2d", 6, False, {"disc": 1}, seed=1)
    split = make_split(0, held_out_fraction=0.5, held_out_datasets=(), held_out_classes=(), datasets=("toy2d",),
                       root=tmp_path)
    split.save(tmp_path / "split.json")
    paths = [save_checkpoint(tmp_path / f"run{i}.pt", _model(i), metadata={"model_version": f"run{i}",
                                                                         "iterations": 10 * i}) for i in (1, 2)]
    out = main([*map(str, paths), "--out", str(tmp_path / "soup.pt"), "--split", str(tmp_path / "split.json"),
                "--version", "soup-1", "--data-root", str(tmp_path), "--datasets", "toy2d"])
    loaded = load_checkpoint(out)
    assert loaded.model.version == loaded.metadata["model_version"] == "soup-1"
    assert loaded.memory_bank.class_names == ["toy2d/disc"]
    assert len(loaded.metadata["averaged_from"]) == 2 and "run2, 20 iterations" in loaded.metadata["averaged_from"][1]
    reference = average_models([_model(1), _model(2)]).state_dict()
    assert all(torch.allclose(loaded.model.state_dict()[k], v) for k, v in reference.items())


def _refiner(seed: int) -> ClickRefiner:
    torch.manual_seed(seed)
    refiner = ClickRefiner(ClickRefinerConfig(channels=(4, 8), feature_channels=4))
    with torch.no_grad():
        for parameter in refiner.parameters():
            parameter.normal_()
    return refiner


def test_click_refiners_for_one_model_are_averaged_and_others_refused(tmp_path: Path) -> None:
    paths = [save_click_refiner(tmp_path / f"refiner{i}.pt", _refiner(i), "iris-a",
                                {"iterations": 5 * i, "recipe": {"seed": i}}) for i in (1, 2)]
    out = main([*map(str, paths), "--click-refiners", "--out", str(tmp_path / "soup.pt")])
    loaded = load_click_refiner(out)
    assert loaded.iris_model_version == "iris-a"
    assert "10 iterations, seed 2" in loaded.metadata["averaged_from"][1]
    a, b = _refiner(1).state_dict(), _refiner(2).state_dict()
    state = loaded.refiner.state_dict()
    assert all(torch.allclose(state[k], (v + b[k]) / 2) for k, v in a.items() if v.is_floating_point())
    assert not torch.allclose(state["head.weight"], a["head.weight"])
    other = save_click_refiner(tmp_path / "other.pt", _refiner(3), "iris-b")
    with pytest.raises(IrisInputError, match="different IRIS models"):
        main([str(paths[0]), str(other), "--click-refiners", "--out", str(tmp_path / "bad.pt")])
    assert not (tmp_path / "bad.pt").exists()


def test_averaging_iris_checkpoints_demands_a_split_and_a_version(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--out", str(tmp_path / "soup.pt")])
