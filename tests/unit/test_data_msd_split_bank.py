"""MSDDataset, split, SliceBank and EpisodeSampler on tiny MSD folders written to tmp_path."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from iris_engine.data.episodes import EpisodeConfig, EpisodeSampler, iter_eval_pairs, training_rows
from iris_engine.data.msd import MSDDataset
from iris_engine.data.parallel_episodes import ParallelEpisodes
from iris_engine.data.pseudo_tasks import slice_superpixels
from iris_engine.data.slices import SliceBank, build_slice_bank
from iris_engine.data.splits import Split, make_split
from iris_engine.errors import IrisInputError


def _write_msd(root: Path, name: str, n_cases: int, three_d: bool, labels: dict[str, int], seed: int = 0) -> Path:
    """Write a tiny MSD folder with blob labels (each case contains every label)."""
    rng = np.random.default_rng(seed)
    folder = root / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir(parents=True)
    training = []
    for i in range(n_cases):
        cid = f"{name}_{i:03d}"
        shape = (24, 20, 16) if three_d else (40, 36)
        lab = np.zeros(shape, dtype=np.uint8)
        for v in labels.values():
            if v == 0:
                continue
            x, y = rng.integers(2, 12, 2)
            sl = (slice(x, x + 8), slice(y, y + 8)) + ((slice(3, 13),) if three_d else ())
            lab[sl] = v
        img = (lab * 40 + rng.integers(0, 30, shape)).astype(np.uint8)
        if three_d:
            aff = np.diag([1.5, 1.5, 3.0, 1.0])
            nib.save(nib.Nifti1Image(img, aff), folder / "imagesTr" / f"{cid}.nii.gz")
            nib.save(nib.Nifti1Image(lab, aff), folder / "labelsTr" / f"{cid}.nii.gz")
            training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
        else:
            Image.fromarray(np.stack([img] * 3, -1)).save(folder / "imagesTr" / f"{cid}.png")
            Image.fromarray(lab).save(folder / "labelsTr" / f"{cid}.png")
            training.append({"image": f"./imagesTr/{cid}.png", "label": f"./labelsTr/{cid}.png"})
    meta = {"name": name, "modality": {"0": "MR"}, "labels": {"background": 0, **labels}, "training": training}
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture()
def tiny_root(tmp_path: Path) -> Path:
    _write_msd(tmp_path, "toy2d", 8, False, {"disc": 1, "ring": 2}, seed=1)
    _write_msd(tmp_path, "toy3d", 6, True, {"organ_a": 1, "organ_b": 2, "organ_c": 3}, seed=2)
    return tmp_path


def test_msd_2d_and_3d_load(tiny_root: Path) -> None:
    ds2 = MSDDataset(tiny_root / "toy2d")
    assert ds2.case_ids[0] == "toy2d_000" and ds2.foreground_labels == {"disc": 1, "ring": 2}
    img, lab, spacing = ds2.load_case("toy2d_000")
    assert img.shape == (40, 36) and img.dtype == np.float32 and lab.shape == img.shape
    assert set(np.unique(lab)) <= {0, 1, 2} and spacing == (1.0, 1.0)
    ds3 = MSDDataset(tiny_root / "toy3d")
    img, lab, spacing = ds3.load_case("toy3d_001")
    assert img.shape == (24, 20, 16) and lab.shape == img.shape and spacing == (1.5, 1.5, 3.0)


def test_msd_shape_mismatch_is_clear(tiny_root: Path) -> None:
    folder = tiny_root / "toy2d"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder / "labelsTr" / "toy2d_000.png")
    with pytest.raises(IrisInputError, match="shape"):
        MSDDataset(folder).load_case("toy2d_000")
    with pytest.raises(IrisInputError, match="unknown case"):
        MSDDataset(folder).load_case("nope")
    with pytest.raises(IrisInputError, match="dataset.json"):
        MSDDataset(tiny_root / "missing")


def test_msd_geometry_mismatch_is_clear(tiny_root: Path) -> None:
    folder = tiny_root / "toy3d"
    label_path = folder / "labelsTr" / "toy3d_000.nii.gz"
    label = nib.load(label_path)
    nib.save(nib.Nifti1Image(np.asanyarray(label.dataobj), np.diag([1.5, 1.5, 5.0, 1.0])), label_path)
    with pytest.raises(IrisInputError, match="spacing"):
        MSDDataset(folder).load_case("toy3d_000")


def _split(root: Path, seed: int = 0, **kw) -> Split:
    return make_split(seed, held_out_datasets=(), held_out_classes=(), datasets=("toy2d", "toy3d"), root=root, **kw)


def test_split_deterministic_and_disjoint(tiny_root: Path, tmp_path: Path) -> None:
    a, b = _split(tiny_root), _split(tiny_root)
    assert a.to_dict() == b.to_dict()
    for ds in ("toy2d", "toy3d"):
        assert not set(a.train_cases[ds]) & set(a.test_cases[ds])
        assert a.test_cases[ds] and a.train_cases[ds]
    a.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json").to_dict() == a.to_dict()
    bad = a.to_dict()
    bad["test_cases"]["toy2d"].append(bad["train_cases"]["toy2d"][0])
    with pytest.raises(AssertionError, match="leak"):
        Split.from_dict(bad)


def _bank_and_split(root: Path, **split_kw) -> tuple[SliceBank, Split]:
    bank = build_slice_bank(datasets=("toy2d", "toy3d"), root=root, size=32, cache_dir=root / "cache")
    split = make_split(0, datasets=("toy2d", "toy3d"), root=root, **split_kw)
    return bank, split


def test_bank_cache_roundtrip(tiny_root: Path) -> None:
    bank, _ = _bank_and_split(tiny_root, held_out_datasets=(), held_out_classes=())
    assert bank.images.dtype == np.float16 and bank.labels.dtype == np.uint8 and bank.images.shape[1:] == (32, 32)
    assert list(tiny_root.joinpath("cache").glob("slicebank_*.npz"))
    again = build_slice_bank(datasets=("toy2d", "toy3d"), root=tiny_root, size=32, cache_dir=tiny_root / "cache")
    assert np.array_equal(again.labels, bank.labels) and again.class_names == bank.class_names
    assert bank.summary()["toy3d"]["cases"] == 6


def _save_repeatedly(bank: SliceBank, path: Path, times: int) -> None:
    for _ in range(times):
        bank.save(path)


def test_two_processes_writing_one_cached_bank_both_succeed(tiny_root: Path, tmp_path: Path) -> None:
    """Two trainings started together build the same cache file: each writes its own temp file and renames it."""
    bank, _ = _bank_and_split(tiny_root, held_out_datasets=(), held_out_classes=())
    target = tmp_path / "shared_cache" / "slicebank_shared.npz"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_save_repeatedly, args=(bank, target, 15)) for _ in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0]
    assert np.array_equal(SliceBank.load(target).labels, bank.labels)
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_sampler_shapes_and_patient_rule(tiny_root: Path) -> None:
    bank, split = _bank_and_split(tiny_root, held_out_datasets=(), held_out_classes=())
    cfg = EpisodeConfig(supports_per_episode=2, queries_per_episode=2, max_classes=3, synthetic_fraction=0.25)
    sampler = EpisodeSampler(bank, split, cfg, seed=3)
    batch = sampler.sample_batch(4)
    assert batch.support_images.shape == (4, 2, 1, 32, 32) and batch.support_images.dtype == torch.float32
    assert batch.support_masks.shape == (4, 2, 3, 32, 32) and batch.query_masks.shape == (4, 2, 3, 32, 32)
    assert batch.query_images.shape == (4, 2, 1, 32, 32) and batch.class_valid.dtype == torch.bool
    assert set(torch.unique(batch.support_masks).tolist()) <= {0.0, 1.0}
    for _ in range(30):
        batch = sampler.sample_batch(4)
        for b in range(4):
            assert not set(batch.support_cases[b]) & set(batch.query_cases[b])
            for j in range(3):
                if batch.class_valid[b, j]:
                    assert batch.task_names[b][j] is not None
                    assert (batch.support_masks[b, :, j].flatten(1).sum(1) > 0).all()
                else:
                    assert batch.support_masks[b, :, j].sum() == 0 and batch.query_masks[b, :, j].sum() == 0


def test_held_out_never_sampled(tiny_root: Path) -> None:
    bank, split = _bank_and_split(tiny_root, held_out_datasets=("toy2d",), held_out_classes=(("toy3d", "organ_b"),))
    sampler = EpisodeSampler(bank, split, EpisodeConfig(synthetic_fraction=0.0, augment=False), seed=0)
    test_cases = set(split.test_cases["toy3d"])
    for _ in range(20):
        batch = sampler.sample_batch(8)
        for b in range(8):
            for task in batch.task_names[b]:
                assert task is None or (task[0] == "toy3d" and task[1] != "organ_b")
            assert not set(batch.support_cases[b] + batch.query_cases[b]) & test_cases


def test_single_patient_dataset_rejected(tiny_root: Path) -> None:
    bank, split = _bank_and_split(tiny_root, held_out_datasets=(), held_out_classes=())
    split.train_cases["toy2d"] = split.train_cases["toy2d"][:1]
    with pytest.raises(IrisInputError, match="one patient"):
        EpisodeSampler(bank, split, EpisodeConfig(), seed=0)


def test_eval_pairs_other_patients(tiny_root: Path) -> None:
    bank, split = _bank_and_split(tiny_root, held_out_datasets=(), held_out_classes=())
    pairs = list(iter_eval_pairs(bank, split, "toy3d", "organ_a", n_supports=1, seed=0))
    again = list(iter_eval_pairs(bank, split, "toy3d", "organ_a", n_supports=1, seed=0))
    assert pairs and [p.query_case for p in pairs] == [p.query_case for p in again]
    for p in pairs:
        assert p.query_patient not in p.support_patients and p.query_case in split.test_cases["toy3d"]
        assert p.support_masks.shape == (1, 1, 32, 32) and p.support_masks.sum() > 0


def test_superpixel_episodes_use_train_slices_and_need_no_labels(tiny_root: Path) -> None:
    bank, split = _bank_and_split(tiny_root, held_out_datasets=("toy2d",), held_out_classes=())
    cfg = EpisodeConfig(synthetic_fraction=0.0, superpixel_fraction=1.0, augment=False, max_classes=2)
    sampler = EpisodeSampler(bank, split, cfg, seed=0)
    train_rows = set(sampler.pseudo_rows.tolist())
    assert train_rows and all(bank.case_ids[r] in split.train_cases["toy3d"] for r in train_rows)
    batch = sampler.sample_batch(6)
    for b in range(6):
        assert batch.task_names[b][0][0] == "superpixel" and batch.synthetic[b]
        assert batch.support_masks[b, 0, 0].sum() > 0


def test_same_volume_episodes_pair_nearby_slices_of_one_case(tiny_root: Path) -> None:
    bank, split = _bank_and_split(tiny_root, held_out_datasets=("toy2d",), held_out_classes=())
    cfg = EpisodeConfig(synthetic_fraction=0.0, same_volume_fraction=1.0, max_volume_gap=3, augment=False)
    sampler = EpisodeSampler(bank, split, cfg, seed=0)
    for _ in range(10):
        episode = sampler.sample_episode()
        assert episode.same_subject and episode.support_patients == episode.query_patients
        rows = [int(np.flatnonzero((bank.images == image).all(axis=(1, 2)))[0]) for image in episode.images]
        gaps = {abs(int(bank.slice_index[rows[0]]) - int(bank.slice_index[r])) for r in rows[1:]}
        assert gaps and max(gaps) <= 3


def test_self_pair_episodes_query_the_support_slice_augmented_on_its_own(tiny_root: Path) -> None:
    bank, split = _bank_and_split(tiny_root, held_out_datasets=("toy2d",), held_out_classes=())
    cfg = EpisodeConfig(synthetic_fraction=0.0, self_pair_fraction=1.0, augment=False)
    sampler = EpisodeSampler(bank, split, cfg, seed=0)
    for _ in range(10):
        episode = sampler.sample_episode()
        assert episode.same_subject and episode.support_patients == episode.query_patients
        assert np.array_equal(episode.images[0], episode.images[1])
        assert (episode.labels[0] == episode.values[0]).sum() >= cfg.min_support_area
    augmented = EpisodeSampler(bank, split, EpisodeConfig(synthetic_fraction=0.0, self_pair_fraction=1.0,
                                                            aug_prob=1.0), seed=0).sample_batch(4)
    assert not torch.equal(augmented.support_images[:, 0], augmented.query_images[:, 0])


def test_parallel_episodes_come_from_workers_with_their_own_streams(tiny_root: Path) -> None:
    bank, split = _bank_and_split(tiny_root, held_out_datasets=(), held_out_classes=())
    cfg = EpisodeConfig(synthetic_fraction=0.0, superpixel_fraction=0.5, max_classes=2)
    sampler = EpisodeSampler(bank, split, cfg, seed=0)
    source = ParallelEpisodes(sampler, batch_size=3, workers=2, seed=7)
    row = int(sampler.pseudo_rows[0])
    assert np.array_equal(sampler.superpixels(row), slice_superpixels(row, bank.images[row], cfg.pseudo))
    assert len(sampler.superpixels._cache) == len(sampler.pseudo_rows)  # computed up front, shared by the workers
    batches = [source.sample_batch(3) for _ in range(4)]
    assert source.get_state() == {"served": 4}
    assert all(b.query_images.shape == (3, 1, 1, 32, 32) and b.support_masks.shape == (3, 1, 2, 32, 32)
               for b in batches)
    assert not torch.equal(batches[0].query_images, batches[1].query_images)  # two workers, two streams
    for batch in batches:
        for b in range(3):
            if not batch.synthetic[b] and not batch.same_subject[b]:
                assert not set(batch.support_cases[b]) & set(batch.query_cases[b])
    with pytest.raises(ValueError, match="batches of 3"):
        source.sample_batch(4)
    resumed = ParallelEpisodes(EpisodeSampler(bank, split, cfg, seed=0), batch_size=3, workers=1, seed=7)
    resumed.set_state({"served": 4})
    assert resumed.sample_batch(3).query_images.shape == (3, 1, 1, 32, 32) and resumed.served == 5


def test_training_from_a_saved_bank_needs_no_data_folder(tiny_root: Path, tmp_path: Path) -> None:
    from iris_engine.checkpoint import load_checkpoint
    from iris_engine.training import run

    bank, split = _bank_and_split(tiny_root, held_out_datasets=(), held_out_classes=())
    bank.save(tmp_path / "bank.npz")
    split.save(tmp_path / "chosen_split.json")
    final = run.main(["--out", str(tmp_path / "run"), "--bank", str(tmp_path / "bank.npz"), "--split",
                      str(tmp_path / "chosen_split.json"), "--data-root", str(tmp_path / "absent"), "--iterations", "2",
                      "--batch-size", "2", "--threads", "1", "--loader-workers", "1", "--low-res-fraction", "0.5",
                      "--device", "cpu"])
    loaded = load_checkpoint(final)
    assert loaded.model.config.image_size == bank.size == 32  # the bank's size, not --image-size's default
    assert Split.load(tmp_path / "run" / "split.json").to_dict() == split.to_dict()
    assert loaded.metadata["split_fingerprint"] == split.fingerprint() and len(loaded.memory_bank) > 0


def test_a_compact_training_bank_keeps_labels_and_close_images(tiny_root: Path, tmp_path: Path) -> None:
    from iris_engine.data import bank_export

    bank, split = _bank_and_split(tiny_root, held_out_datasets=(), held_out_classes=())
    split.save(tmp_path / "split.json")
    out = bank_export.main(["--out", str(tmp_path / "bank.npz"), "--size", "32", "--data-root", str(tiny_root),
                            "--datasets", "toy2d", "toy3d", "--train-only", "--split", str(tmp_path / "split.json"),
                            "--compact"])
    carried = SliceBank.load(out)
    rows = training_rows(bank, split)
    assert len(carried) == len(rows) < len(bank)
    assert {c for d in ("toy2d", "toy3d") for c in carried.case_ids[carried.dataset_slices(d)]} <= {
        c for d in ("toy2d", "toy3d") for c in split.train_cases[d]}
    for name in ("labels", "dataset_index", "case_ids", "patient_ids", "slice_index", "areas"):
        assert np.array_equal(getattr(carried, name), getattr(bank, name)[rows])
    original = bank.images[rows].astype(np.float32)
    step = (original.max(axis=(1, 2)) - original.min(axis=(1, 2)))[:, None, None] / 255
    error = np.abs(carried.images.astype(np.float32) - original) / step  # in 8-bit code steps
    assert carried.images.dtype == np.float16
    assert error.mean() < 2.0 and np.percentile(error, 99) < 12.0  # JPEG at quality 92


def test_resizing_a_bank_in_chunks_gives_the_one_pass_result():
    from iris_engine.data.slices import resize_images, resize_labels

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (7, 40, 40)).astype(np.uint8)
    labels[:2][labels[:2] == 4] = 0  # a value missing from the first chunk
    images = rng.normal(size=(7, 40, 40)).astype(np.float16)
    whole_labels, whole_images = resize_labels(labels, 16, chunk=7), resize_images(images, 16, chunk=7)
    assert whole_labels.shape == (7, 16, 16) and set(np.unique(whole_labels)) <= {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(resize_labels(labels, 16, chunk=2), whole_labels)
    np.testing.assert_array_equal(resize_images(images, 16, chunk=3), whole_images)
