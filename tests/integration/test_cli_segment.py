"""`iris segment` / `iris export` end to end on a tiny checkpoint and a small mixed folder."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from iris_engine.checkpoint import save_checkpoint
from iris_engine.cli import _load_segmenter, autocast_context, main
from iris_engine.config import ModelConfig
from iris_engine.io.readers import read_image
from iris_engine.memory_bank import MemoryBank
from iris_engine.model.iris import IrisModel

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=64, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)


def _disk(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _image(mask: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 10, mask.shape)
    return np.clip(60 + 120 * mask + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny checkpoint (with a memory bank), a two-class support pair and a folder of mixed inputs."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = IrisModel(TINY)
    bank = MemoryBank()
    bank.update("Task09_Spleen/spleen", torch.randn(TINY.num_task_tokens, TINY.embed_dim))
    bank.update("drive/vessel", torch.randn(TINY.num_task_tokens, TINY.embed_dim),
                fine_tokens=torch.randn(TINY.num_task_tokens, TINY.embed_dim))
    weights = save_checkpoint(root / "tiny.pt", model, bank, metadata={"model_version": "tiny-test"})
    labels = (_disk((64, 64), (24, 24), 10) + 2 * _disk((64, 64), (44, 44), 8)).astype(np.uint8)
    Image.fromarray(_image(labels > 0, 0)).save(root / "support.png")
    Image.fromarray(labels).save(root / "support_mask.png")
    scans = root / "scans"
    scans.mkdir()
    Image.fromarray(_image(_disk((48, 40), (20, 20), 9), 1)).save(scans / "a.png")
    Image.fromarray(_image(_disk((64, 64), (30, 30), 12), 2)).save(scans / "b.png")
    volume = np.stack([_image(_disk((20, 24), (10, 12), 5), s) for s in range(6)], axis=-1).astype(np.int16)
    affine = np.array([[0, -0.8, 0, 10], [0.8, 0, 0, -5], [0, 0, 2.5, 30], [0, 0, 0, 1]], dtype=float)
    nib.save(nib.Nifti1Image(volume, affine), scans / "vol.nii.gz")
    (scans / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (scans / "notes.txt").write_text("not an image")
    return {"root": root, "weights": weights, "scans": scans, "affine": affine}


def _support_args(ws: dict[str, Path]) -> list[str]:
    return ["--support", str(ws["root"] / "support.png"), str(ws["root"] / "support_mask.png")]


def test_segment_folder_writes_masks_on_input_geometry(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["segment", *_support_args(workspace), "--input", str(workspace["scans"]), "--output", str(out),
                 "--weights", str(workspace["weights"]), "--class", "organ", "--class", "lesion", "--quiet",
                 "--fill-holes", "--batch-size", "4"])
    captured = capsys.readouterr()
    assert code == 0
    assert Image.open(out / "a_seg.png").size == (40, 48)
    assert Image.open(out / "b_seg.png").size == (64, 64)
    written = nib.load(out / "vol_seg.nii.gz")
    assert written.shape == (20, 24, 6)
    np.testing.assert_allclose(written.affine, workspace["affine"])
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
    assert json.loads((out / "labels.json").read_text()) == {"1": "organ", "2": "lesion"}
    assert "3 segmented, 2 skipped, 0 failed" in captured.out
    assert "broken.nii.gz" in captured.out and "notes.txt" in captured.out
    assert "skipped: " in captured.err and "Traceback" not in captured.err


def test_in_context_tuning_runs_once_for_the_batch(workspace, tmp_path, capsys):
    code = main(["segment", *_support_args(workspace), "--input", str(workspace["scans"] / "a.png"),
                 "--output", str(tmp_path), "--weights", str(workspace["weights"]), "--quiet",
                 "--strategy", "in_context_tuning", "--tuning-steps", "2", "--format", "nifti"])
    assert code == 0
    assert nib.load(tmp_path / "a_seg.nii.gz").shape == (48, 40)
    assert "in_context_tuning, classes class_1, class_2" in capsys.readouterr().out


def test_memory_bank_retrieval_by_class_name(workspace, tmp_path, capsys):
    code = main(["segment", "--input", str(workspace["scans"] / "b.png"), "--output", str(tmp_path),
                 "--weights", str(workspace["weights"]), "--class", "spleen", "--quiet"])
    assert code == 0
    assert (tmp_path / "b_seg.png").is_file()
    assert f"memory_bank, classes spleen, model tiny-test, device cpu, read at {TINY.image_size} px\n" \
        in capsys.readouterr().out


def test_a_thin_memory_bank_class_is_read_at_twice_the_input_size(workspace, tmp_path, capsys):
    code = main(["segment", "--input", str(workspace["scans"] / "b.png"), "--output", str(tmp_path),
                 "--weights", str(workspace["weights"]), "--class", "vessel", "--quiet"])
    assert code == 0 and (tmp_path / "b_seg.png").is_file()
    assert f"read at {2 * TINY.image_size} px (a thin structure" in capsys.readouterr().out



def test_a_thin_structures_volume_is_read_on_one_slice_in_three_as_the_engine_reads_it(workspace, tmp_path, capsys):
    volume = read_image(workspace["scans"] / "vol.nii.gz")
    expected = _load_segmenter(workspace["weights"], "cpu", 8, 0.5).segment(volume, "memory_bank",
                                                                            class_names=["drive/vessel"])
    assert expected.input_scale == 2 and expected.slice_stride == 3
    threshold = float(np.median(expected.probabilities))  # about half the voxels in: the interpolation shows
    code = main(["segment", "--input", str(workspace["scans"] / "vol.nii.gz"), "--output", str(tmp_path),
                 "--weights", str(workspace["weights"]), "--class", "vessel", "--quiet", "--threshold", str(threshold)])
    assert code == 0
    assert "volumes on one slice in 3 at most, interpolated between" in capsys.readouterr().out
    written = np.asarray(nib.load(tmp_path / "vol_seg.nii.gz").dataobj) > 0
    np.testing.assert_array_equal(written, expected.probabilities[0] >= threshold)

@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--class", "liver"], "no memory-bank entry for 'liver' (stored: Task09_Spleen/spleen, drive/vessel)"),
        ([], "memory-bank retrieval needs --class NAME"),
    ],
)
def test_memory_bank_errors_are_usage_errors(workspace, tmp_path, capsys, extra, message):
    code = main(["segment", "--input", str(workspace["scans"]), "--output", str(tmp_path),
                 "--weights", str(workspace["weights"]), "--quiet", *extra])
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err and "Traceback" not in captured.err


def test_too_few_class_names_and_bad_weights_are_usage_errors(workspace, tmp_path, capsys):
    args = ["segment", *_support_args(workspace), "--input", str(workspace["scans"]), "--output", str(tmp_path)]
    assert main([*args, "--weights", str(workspace["weights"]), "--class", "organ"]) == 2
    assert "labels up to 2 but only 1 --class names" in capsys.readouterr().err
    assert main([*args, "--weights", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_exit_code_1_when_every_input_fails(workspace, tmp_path, capsys):
    code = main(["segment", *_support_args(workspace), "--input", str(workspace["scans"] / "notes.txt"),
                 "--output", str(tmp_path), "--weights", str(workspace["weights"]), "--quiet"])
    assert code == 1
    assert "0 segmented, 1 skipped, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_command(workspace, tmp_path, capsys, fmt):
    target = tmp_path / f"model.{fmt}"
    assert main(["export", "--weights", str(workspace["weights"]), "--format", fmt, "--output", str(target)]) == 0
    assert target.is_file()
    difference = float(capsys.readouterr().out.rsplit(":", 1)[1])
    assert difference < 1e-3


def test_a_thin_support_segments_the_folder_at_twice_the_input_size(workspace, tmp_path, monkeypatch):
    ring = (_disk((64, 64), (32, 32), 20) & ~_disk((64, 64), (32, 32), 19)).astype(np.uint8)
    Image.fromarray(_image(ring > 0, 3)).save(tmp_path / "thin.png")
    Image.fromarray(ring).save(tmp_path / "thin_mask.png")
    sizes: list[int] = []
    encode_query = IrisModel.encode_query
    monkeypatch.setattr(IrisModel, "encode_query", lambda self, x: sizes.append(x.shape[-1]) or encode_query(self, x))
    out = tmp_path / "out"
    code = main(["segment", "--support", str(tmp_path / "thin.png"), str(tmp_path / "thin_mask.png"),
                 "--input", str(workspace["scans"]), "--output", str(out), "--weights", str(workspace["weights"]),
                 "--class", "ring", "--quiet"])
    assert code == 0
    assert sizes and set(sizes) == {2 * TINY.image_size}
    assert Image.open(out / "a_seg.png").size == (40, 48)
    assert nib.load(out / "vol_seg.nii.gz").shape == (20, 24, 6)


def test_precision_fp32_keeps_float32_where_the_cpu_has_bfloat16(workspace):
    for precision, backend, bf16 in (("fp32", "auto", False), ("auto", "auto", True), ("bf16", "bf16", True),
                                     ("fp16", "auto", False)):
        config = _load_segmenter(workspace["weights"], "cpu", 8, 0.5, precision).config
        assert (config.backend, config.cpu_bf16) == (backend, bf16)
    assert autocast_context("cpu", "bf16") is None and autocast_context("cpu", "auto") is None
    assert autocast_context("cpu", "fp32") is None and autocast_context("cpu", "fp16") is not None
