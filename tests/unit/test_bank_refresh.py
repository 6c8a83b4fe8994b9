"""`iris refresh-bank` and `refresh_memory_bank`: train-class entries, fine entries for thin classes only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from iris_engine.checkpoint import load_checkpoint, save_checkpoint
from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import make_split
from iris_engine.errors import IrisInputError
from iris_engine.model.iris import IrisModel
from iris_engine.training.bank_refresh import main, refresh_memory_bank
from tests.unit.test_data_msd_split_bank import _write_msd
from tests.unit.test_trainer import TINY


@pytest.fixture
def toy(tmp_path: Path):
    _write_msd(tmp_path, "toy2d", 6, False, {"disc": 1}, seed=1)
    split = make_split(0, held_out_fraction=0.5, held_out_datasets=(), held_out_classes=(), datasets=("toy2d",),
                       root=tmp_path)
    size = TINY.image_size
    banks = [build_slice_bank(("toy2d",), root=tmp_path, size=s, cache_dir=None) for s in (size, 2 * size)]
    torch.manual_seed(0)
    return tmp_path, split, IrisModel(TINY).eval(), *banks


def test_only_classes_thinner_than_the_limit_get_a_fine_entry_from_the_same_slices(toy) -> None:
    _, split, model, bank, fine_bank = toy
    coarse = refresh_memory_bank(model, bank, split, 0.999)
    thin = refresh_memory_bank(model, bank, split, 0.999, fine_bank=fine_bank, fine_scale_thickness=100.0)
    thick = refresh_memory_bank(model, bank, split, 0.999, fine_bank=fine_bank, fine_scale_thickness=0.5)
    assert coarse.class_names == thin.class_names == thick.class_names == ["toy2d/disc"]
    assert thin.has_fine("toy2d/disc") and not thick.has_fine("toy2d/disc") and not coarse.has_fine("toy2d/disc")
    assert torch.equal(thin.get("toy2d/disc").tokens, coarse.get("toy2d/disc").tokens)  # coarse entry unchanged
    train = [i for i, c in enumerate(fine_bank.case_ids) if c in split.train_cases["toy2d"]]
    images = torch.from_numpy(fine_bank.images[train].astype("float32"))[:, None]
    masks = torch.from_numpy((fine_bank.labels[train] == 1).astype("float32"))[:, None]
    with torch.no_grad():
        expected = model.encode_task(images, masks)[:, 0].mean(0)  # every train slice (fewer than 16)
    torch.testing.assert_close(thin.get("toy2d/disc", scale=2).tokens[0], expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(IrisInputError, match="fine slice bank must be"):
        refresh_memory_bank(model, bank, split, 0.999, fine_bank=bank)


def test_the_command_rewrites_only_the_memory_bank(toy) -> None:
    root, split, model, bank, _ = toy
    split.save(root / "split.json")
    model.version = "toy-1"
    source = save_checkpoint(root / "in.pt", model, metadata={"model_version": "toy-1"})
    out = main([str(source), "--split", str(root / "split.json"), "--out", str(root / "out.pt"),
                "--data-root", str(root), "--datasets", "toy2d"])
    loaded = load_checkpoint(out)
    assert loaded.model.version == "toy-1" and loaded.memory_bank.class_names == ["toy2d/disc"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.model.state_dict().items())
    expected = refresh_memory_bank(model, bank, split, 0.999).get("toy2d/disc").tokens
    torch.testing.assert_close(loaded.memory_bank.get("toy2d/disc").tokens, expected)
