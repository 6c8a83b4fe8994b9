"""`iris propagate`: geometry kept, painted slices unchanged, bad input refused with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from iris_engine.checkpoint import save_checkpoint
from iris_engine.cli import main
from iris_engine.config import ModelConfig
from iris_engine.model.iris import IrisModel

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)
AFFINE = np.array([[0.0, -0.9, 0.0, 4.0], [0.8, 0.0, 0.0, -3.0], [0.0, 0.0, 2.5, 1.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    image = np.random.default_rng(0).normal(size=(24, 20, 9)).astype(np.float32)
    image[6:16, 5:14, 2:7] += 3.0
    painted = np.zeros(image.shape, dtype=np.uint8)
    painted[6:16, 5:14, 4] = 1
    painted[8:10, 6:8, 4] = 2
    paths = {"image": tmp_path / "ct.nii.gz", "painted": tmp_path / "painted.nii.gz",
             "weights": save_checkpoint(tmp_path / "tiny.pt", IrisModel(TINY))}
    nib.save(nib.Nifti1Image(image, AFFINE), str(paths["image"]))
    nib.save(nib.Nifti1Image(painted, AFFINE), str(paths["painted"]))
    return paths


def test_propagate_writes_a_label_map_with_the_input_geometry(files: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "filled.nii.gz"
    code = main(["propagate", "--input", str(files["image"]), "--painted", str(files["painted"]), "--output",
                 str(out), "--class", "organ", "--class", "lesion", "--weights", str(files["weights"])])
    assert code == 0
    written = nib.load(str(out))
    np.testing.assert_allclose(written.affine, AFFINE)
    labels = np.asarray(written.dataobj)
    painted = np.asarray(nib.load(str(files["painted"])).dataobj)
    assert labels.shape == painted.shape
    np.testing.assert_array_equal(labels[:, :, 4], painted[:, :, 4])
    assert json.loads((tmp_path / "out" / "filled.nii.gz.labels.json").read_text()) == {"1": "organ", "2": "lesion"}
    assert "painted axial slices [4]" in capsys.readouterr().out


@pytest.mark.parametrize(("change", "message"), [
    ("shape", "does not match image shape"),
    ("empty", "nothing is painted"),
    ("unnamed", "painted label 2 has no class name"),
    ("suffix", "use one of"),
])
def test_bad_input_is_refused_and_nothing_is_written(files: dict[str, Path], tmp_path: Path, change: str,
                                                     message: str, capsys: pytest.CaptureFixture[str]) -> None:
    painted = files["painted"]
    if change in ("shape", "empty"):
        data = np.zeros((24, 20, 8) if change == "shape" else (24, 20, 9), dtype=np.uint8)
        painted = tmp_path / "bad.nii.gz"
        nib.save(nib.Nifti1Image(data, AFFINE), str(painted))
    out = tmp_path / "out" / ("filled.png" if change == "suffix" else "filled.nii.gz")
    classes = ["--class", "organ"] + ([] if change == "unnamed" else ["--class", "lesion"])
    code = main(["propagate", "--input", str(files["image"]), "--painted", str(painted), "--output", str(out),
                 *classes, "--weights", str(files["weights"])])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
