"""`iris refresh-bank` and `refresh_memory_bank`: train-class entries, fine entries for thin classes only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from iris_engine.checkpoint import load_checkpoint, save_checkpoint
from iris_engine.config import TrainConfig
from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import make_split
from iris_engine.errors import IrisInputError
from iris_engine.metrics import dice
from iris_engine.model.iris import IrisModel
from iris_engine.training.bank_refresh import FineCheck, check_fine_entry, main, refresh_memory_bank
from iris_engine.training.run import final_memory_bank
from iris_engine.training.run import main as train_main
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
    thin = refresh_memory_bank(model, bank, split, 0.999, fine_bank=fine_bank, fine_scale_thickness=100.0,
                               supports_per_class=64)  # every train slice a support: nothing left to check on
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


def test_the_fine_entry_is_kept_only_where_it_segments_the_other_training_slices_at_least_as_well(toy) -> None:
    _, split, model, bank, fine_bank = toy
    checks: dict[str, FineCheck] = {}
    memory = refresh_memory_bank(model, bank, split, 0.999, supports_per_class=2, fine_bank=fine_bank,
                                 fine_scale_thickness=100.0, checks=checks)
    check = checks["toy2d/disc"]
    assert check.slices == len(split.train_cases["toy2d"]) - 2  # one disc slice per case, two were supports
    assert memory.has_fine("toy2d/disc") == check.kept == (check.fine >= check.plain)
    assert FineCheck(3, 0.5, 0.4).kept is False and FineCheck(3, 0.5, 0.5).kept is True


def test_the_check_scores_the_plain_entry_at_the_input_size_and_the_fine_one_at_twice_it(toy) -> None:
    _, _, model, _, fine_bank = toy
    images = torch.from_numpy(fine_bank.images[:3].astype("float32"))[:, None]
    masks = torch.from_numpy((fine_bank.labels[:3] == 1).astype("float32"))[:, None]
    with torch.no_grad():
        plain = model.encode_task(F.avg_pool2d(images, 2), F.avg_pool2d(masks, 2))[0, 0]
        fine = model.encode_task(images, masks)[0, 0]
        check = check_fine_entry(model, plain, fine, images, masks)
        small = torch.sigmoid(model.segment(F.avg_pool2d(images, 2), plain[None]))
        large = torch.sigmoid(model.segment(images, fine[None]))
    upsampled = F.interpolate(small, size=images.shape[-2:], mode="bilinear", align_corners=False)
    truth = masks[:, 0].numpy() > 0.5
    expected_plain = np.mean([dice(p >= 0.5, t) for p, t in zip(upsampled[:, 0].numpy(), truth, strict=True)])
    expected_fine = np.mean([dice(p >= 0.5, t) for p, t in zip(large[:, 0].numpy(), truth, strict=True)])
    assert check.slices == 3
    assert check.plain == pytest.approx(expected_plain, abs=1e-6)
    assert check.fine == pytest.approx(expected_fine, abs=1e-6)


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


def test_a_bank_resized_to_half_keeps_its_slices_and_recounts_the_areas(toy) -> None:
    _, _, _, bank, fine_bank = toy
    half = fine_bank.resized(bank.size)
    assert half.size == bank.size and half.images.shape == bank.images.shape
    assert list(half.case_ids) == list(fine_bank.case_ids) and half.class_names == fine_bank.class_names
    counted = np.stack([np.bincount(lab.ravel(), minlength=half.areas.shape[1]) for lab in half.labels])
    np.testing.assert_array_equal(half.areas, counted)
    assert 0.5 * fine_bank.areas[:, 1].sum() / 4 < half.areas[:, 1].sum() <= fine_bank.areas[:, 1].sum() / 4


def test_training_on_slices_twice_the_input_size_ends_with_fine_entries(toy) -> None:
    _, split, model, bank, fine_bank = toy
    same, no_checks = final_memory_bank(model, bank, split, TrainConfig(), seed=0)
    assert no_checks == {} and not same.has_fine("toy2d/disc")
    torch.testing.assert_close(same.get("toy2d/disc").tokens, refresh_memory_bank(
        model, bank, split, 0.999).get("toy2d/disc").tokens)
    memory, checks = final_memory_bank(model, fine_bank, split, TrainConfig(), seed=0)
    expected = refresh_memory_bank(model, fine_bank.resized(bank.size), split, 0.999, fine_bank=fine_bank)
    torch.testing.assert_close(memory.get("toy2d/disc").tokens, expected.get("toy2d/disc").tokens)
    assert memory.has_fine("toy2d/disc") == expected.has_fine("toy2d/disc")
    assert set(checks) <= {"toy2d/disc"} and all({"slices", "plain", "fine"} <= set(c) for c in checks.values())


def test_the_input_size_must_be_the_slices_size_or_half_of_it(toy) -> None:
    root, split, _, _, fine_bank = toy
    fine_bank.save(root / "bank.npz")
    split.save(root / "split.json")
    with pytest.raises(IrisInputError, match="--input-size must be"):
        train_main(["--out", str(root / "run"), "--bank", str(root / "bank.npz"), "--split", str(root / "split.json"),
                    "--input-size", str(fine_bank.size // 4)])
