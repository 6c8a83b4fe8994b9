"""`iris refine`: clicks from a JSON file or a click label map, after a support or on an existing mask."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from iris_engine import cli, cli_refine
from iris_engine.checkpoint import save_checkpoint
from iris_engine.config import ModelConfig
from iris_engine.inference import IrisSegmenter
from iris_engine.io.volume import Volume
from iris_engine.model.iris import IrisModel

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("w") / "tiny.pt", IrisModel(TINY))


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    image = np.full((40, 48), 30, np.uint8)
    image[10:30, 8:24] = 200  # a bright block left of column 24
    mask = np.zeros((40, 48), np.uint8)
    mask[12:20, 10:18] = 255
    return {"image": _png(tmp_path / "image.png", image), "mask": _png(tmp_path / "mask.png", mask)}


def test_refine_after_a_support_honours_json_clicks_and_scribbles(weights: Path, files: dict, tmp_path: Path,
                                                                  capsys) -> None:
    clicks = {"clicks": [{"position": [25, 15], "positive": True}, {"position": [35, 40], "positive": False}],
              "scribbles": [{"points": [[2, 30], [2, 45]], "positive": False}]}
    (tmp_path / "clicks.json").write_text(json.dumps(clicks))
    out = tmp_path / "refined.png"
    code = cli.main(["refine", "--input", str(files["image"]), "--support", str(files["image"]), str(files["mask"]),
                     "--clicks", str(tmp_path / "clicks.json"), "--output", str(out), "--weights", str(weights)])
    assert code == 0 and "refined with" in capsys.readouterr().out
    refined = np.asarray(Image.open(out)) > 0
    assert refined.shape == (40, 48) and refined[25, 15] and not refined[35, 40] and not refined[2, 30:46].any()


def test_refine_an_existing_nifti_mask_with_a_click_map(weights: Path, tmp_path: Path) -> None:
    image = np.zeros((24, 20, 5), np.float32)
    image[4:16, 4:12, :] = 100.0
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "volume.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), affine), str(tmp_path / "empty.nii.gz"))
    marks = np.zeros(image.shape, np.uint8)
    marks[10, 8, 2] = 1
    np.save(tmp_path / "clicks.npy", marks)
    out = tmp_path / "refined.nii.gz"
    code = cli.main(["refine", "--input", str(tmp_path / "volume.nii.gz"), "--mask", str(tmp_path / "empty.nii.gz"),
                     "--clicks", str(tmp_path / "clicks.npy"), "--output", str(out), "--weights", str(weights)])
    assert code == 0
    written = nib.load(str(out))
    labels = np.asarray(written.dataobj)
    assert np.allclose(written.affine, affine) and labels[10, 8, 2] == 1
    on_slice = labels[:, :, 2]
    assert on_slice[4:16, 4:12].sum() > 10 and on_slice.sum() == on_slice[4:16, 4:12].sum()  # stays in the block


@pytest.mark.parametrize(("content", "message"), [
    ({"clicks": [{"position": [99, 1]}]}, "outside the image"),
    ({"clicks": [{"position": [1.5, 2]}]}, "integer voxel indices"),
    ({"taps": []}, '"clicks" and/or "scribbles"'),
    ({"clicks": []}, "no clicks"),
])
def test_bad_click_files_exit_2_with_the_reason_and_write_nothing(weights: Path, files: dict, tmp_path: Path,
                                                                  capsys, content: dict, message: str) -> None:
    (tmp_path / "clicks.json").write_text(json.dumps(content))
    out = tmp_path / "refined.png"
    code = cli.main(["refine", "--input", str(files["image"]), "--mask", str(files["mask"]), "--clicks",
                     str(tmp_path / "clicks.json"), "--output", str(out), "--weights", str(weights)])
    assert code == 2 and message in capsys.readouterr().err and not out.exists()


def test_an_existing_thin_mask_is_refined_at_twice_the_input_size_as_the_engine_reads_it(tmp_path: Path) -> None:
    segmenter = IrisSegmenter(IrisModel(TINY))
    volume = Volume(np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32), np.eye(4), "MR")
    line, block = np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8)
    line[8:56, 30:32] = 1  # one pixel thick on the 32 px model grid
    block[10:40, 12:44] = 1
    scales = []
    for name, mask in (("line", line), ("block", block), ("empty", np.zeros((64, 64), np.uint8))):
        path = _png(tmp_path / f"{name}.png", mask)
        scales.append(cli_refine._mask_result(path, volume, ["structure"], segmenter).input_scale)
    assert scales == [2, 1, 1]
