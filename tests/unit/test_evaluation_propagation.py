"""Propagation evaluation: painted slices, the two baselines, scoring and the whole run on a tiny MSD folder."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from iris_engine.checkpoint import save_checkpoint
from iris_engine.config import ModelConfig
from iris_engine.data.splits import Split
from iris_engine.evaluation.propagation import (
    PropagationEvalConfig,
    copy_nearest,
    interpolate_between,
    main,
    painted_indices,
    run_propagation_evaluation,
    score,
)
from iris_engine.model.iris import IrisModel

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)


def _cone(shape: tuple[int, int, int] = (40, 40, 13)) -> np.ndarray:
    """A disc whose radius grows linearly from slice 0 to slice 12."""
    x, y = np.meshgrid(np.arange(shape[0]) - 20, np.arange(shape[1]) - 20, indexing="ij")
    return np.stack([x**2 + y**2 <= (4 + 1.2 * z) ** 2 for z in range(shape[2])], axis=2)


def test_painted_indices() -> None:
    assert painted_indices(10, 20, 1) == [15]
    assert painted_indices(0, 12, 3) == [2, 6, 10]
    assert painted_indices(4, 5, 3) == [4, 5]


def test_baselines_on_a_cylinder_and_a_cone() -> None:
    cylinder = np.repeat(_cone()[:, :, 6:7], 13, axis=2)
    for method in (copy_nearest(cylinder, [2, 10]), interpolate_between(cylinder, [2, 10], (1.0, 1.0))):
        assert score(method, cylinder, 0, 12, [2, 10], 0.001)["dice"] == 1.0
    cone = _cone()
    copied = score(copy_nearest(cone, [0, 12]), cone, 0, 12, [0, 12], 0.001)["dice"]
    interpolated = score(interpolate_between(cone, [0, 12], (1.0, 1.0)), cone, 0, 12, [0, 12], 0.001)["dice"]
    assert interpolated > 0.97 and copied < 0.9
    np.testing.assert_array_equal(interpolate_between(cone, [6], (1.0, 1.0)), copy_nearest(cone, [6]))


def test_score_counts_false_positives_outside_the_range_only() -> None:
    truth = np.zeros((10, 10, 8), dtype=bool)
    truth[2:5, 2:5, 2:6] = True
    prediction = truth.copy()
    prediction[2:5, 2:5, 7] = True
    result = score(prediction, truth, 2, 5, [3], voxel_ml=0.5)
    assert result["dice"] == 1.0 and result["fp_ml"] == 9 * 0.5 and result["fp_fraction"] == 9 / 36


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> tuple[Path, Split, Path]:
    root = tmp_path / "data"
    folder = root / "toy3d"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for case in ("toy_a", "toy_b", "toy_c"):
        labels = np.zeros((24, 24, 10), dtype=np.uint8)
        labels[6:16, 6:16, 2:8] = 1
        labels[17:21, 4:8, 4:6] = 2
        image = rng.normal(0, 5, labels.shape).astype(np.float32) + 60.0 * (labels > 0)
        for kind, data in (("imagesTr", image), ("labelsTr", labels)):
            nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0])), str(folder / kind / f"{case}.nii.gz"))
        training.append({"image": f"imagesTr/{case}.nii.gz", "label": f"labelsTr/{case}.nii.gz"})
    (folder / "dataset.json").write_text(json.dumps({"name": "toy3d", "labels": {"background": 0, "box": 1, "bar": 2},
                                                      "modality": {"0": "MR"}, "training": training}))
    split = Split(seed=0, train_cases={"toy3d": ["toy_a"]}, test_cases={"toy3d": ["toy_b", "toy_c"]},
                  patients={"toy3d": {c: c for c in ("toy_a", "toy_b", "toy_c")}})
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", IrisModel(TINY))
    return root, split, checkpoint


def test_run_scores_every_test_structure_and_writes_the_report(tiny_dataset, tmp_path: Path) -> None:
    root, split, checkpoint = tiny_dataset
    payload = run_propagation_evaluation(checkpoint, split, tmp_path / "report", PropagationEvalConfig(), root)
    rows = payload["rows"]
    assert {(r["case_id"], r["class_name"], r["k"]) for r in rows} == {
        (c, s, k) for c in ("toy_b", "toy_c") for s in ("box", "bar") for k in (1, 3)}
    box = next(r for r in rows if r["class_name"] == "box" and r["k"] == 3)
    assert box["painted"] == [3, 4, 6] and box["range"] == [2, 7]
    assert box["copy_nearest"]["dice"] == 1.0 and box["interpolation"]["dice"] == 1.0
    bar = next(r for r in rows if r["class_name"] == "bar" and r["k"] == 3)
    assert bar["painted"] == [4, 5] and "note" in bar
    for row in rows:
        if "note" not in row:
            assert 0.0 <= row["propagation"]["dice"] <= 1.0 and row["propagation"]["fp_ml"] >= 0.0
    markdown = (tmp_path / "report" / "propagation.md").read_text()
    assert "| toy3d | 1 | 4 |" in markdown and "no unpainted slice" in markdown
    assert json.loads((tmp_path / "report" / "propagation.json").read_text())["structures"] == 4


def test_cli_subsample_with_a_fixed_seed(tiny_dataset, tmp_path: Path) -> None:
    root, split, checkpoint = tiny_dataset
    split.save(tmp_path / "split.json")
    args = ["--checkpoint", str(checkpoint), "--split", str(tmp_path / "split.json"), "--data-root", str(root),
            "--ks", "1", "--max-structures", "2", "--seed", "3"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    first = json.loads((tmp_path / "a" / "propagation.json").read_text())
    second = json.loads((tmp_path / "b" / "propagation.json").read_text())
    assert first["subsampled"] and first["structures"] == 2
    assert [r["case_id"] + r["class_name"] for r in first["rows"]] == \
        [r["case_id"] + r["class_name"] for r in second["rows"]]


def test_dev_scores_training_patients_only_and_says_so(tiny_dataset, tmp_path: Path) -> None:
    root, _, checkpoint = tiny_dataset
    split = Split(seed=0, train_cases={"toy3d": ["toy_a", "toy_b"]}, test_cases={"toy3d": ["toy_c"]},
                  patients={"toy3d": {c: c for c in ("toy_a", "toy_b", "toy_c")}})
    payload = run_propagation_evaluation(checkpoint, split, tmp_path / "dev", PropagationEvalConfig(ks=(1,), dev=True),
                                         root)
    assert {r["case_id"] for r in payload["rows"]} == {"toy_a", "toy_b"}
    assert all(r["input_scale"] == 1 for r in payload["rows"] if r["class_name"] == "box")
    assert "TRAINING patients" in (tmp_path / "dev" / "propagation.md").read_text()
