"""`iris segment` on DICOM as archives export it: UID-named files, two series in a folder, a nested export."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from iris_engine.checkpoint import save_checkpoint
from iris_engine.cli import main
from iris_engine.config import ModelConfig
from iris_engine.data.shared_paths import shared_data_dir
from iris_engine.io.readers import read_image
from iris_engine.model.iris import IrisModel
from tests.dicom_factory import SeriesSpec, write_series

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=64, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)


@pytest.fixture(scope="module")
def model_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """--weights of a tiny untrained checkpoint and one 2D support pair (the masks' content is not judged)."""
    root = tmp_path_factory.mktemp("dicom-cli")
    torch.manual_seed(0)
    weights = save_checkpoint(root / "tiny.pt", IrisModel(TINY), metadata={"model_version": "tiny-test"})
    yy, xx = np.mgrid[:32, :32]
    disk = (yy - 16) ** 2 + (xx - 16) ** 2 <= 64
    Image.fromarray((60 + 120 * disk).astype(np.uint8)).save(root / "support.png")
    Image.fromarray(disk.astype(np.uint8)).save(root / "support_mask.png")
    return ["--weights", str(weights), "--support", str(root / "support.png"), str(root / "support_mask.png"),
            "--class", "liver", "--quiet"]


def _segment(model_args: list[str], source: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["segment", *model_args, "--input", str(source), "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    return captured.out


def test_uid_named_series_folder_is_one_volume_and_one_dicom_seg(model_args, tmp_path, capsys):
    spec = SeriesSpec(slices=6)
    write_series(tmp_path / "CT_export", spec)
    (tmp_path / "CT_export" / "notes.txt").write_text("beside the series")
    out = _segment(model_args, tmp_path / "CT_export", tmp_path / "out", capsys)
    assert "1 segmented, 1 skipped, 0 failed" in out and "notes.txt" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["CT_export_seg.dcm", "labels.json"]
    seg = hd.seg.segread(tmp_path / "out" / "CT_export_seg.dcm")
    assert int(seg.NumberOfFrames) == spec.slices and seg.SegmentSequence[0].SegmentLabel == "liver"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == spec.series_uid
    source = read_image(tmp_path / "CT_export")
    assert {uid for _, _, uid in seg.get_source_image_uids()} == {
        ds.SOPInstanceUID for ds in source.metadata["dicom_datasets"]}


def test_two_series_and_a_nested_export_give_one_mask_per_series(model_args, tmp_path, capsys):
    arterial = SeriesSpec(description="Arterial", number=3, slices=4)
    venous = SeriesSpec(description="Venous", number=4, slices=5, rows=8, cols=8, series_uid=None,
                        name=lambda k, uid: f"IM{k:04d}")  # blank Series UID: grouped by geometry
    write_series(tmp_path / "export" / "PAT1" / "ST1" / "SE1", arterial)
    write_series(tmp_path / "export" / "PAT1" / "ST1" / "SE2", venous)
    (tmp_path / "export" / "PAT1" / "thumb.jpg").write_bytes(b"\xff\xd8\xff not a real jpeg")
    out = _segment(model_args, tmp_path / "export", tmp_path / "out", capsys)
    assert "2 segmented, 1 skipped, 0 failed" in out and "PAT1/thumb.jpg" in out
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert written == {"export_Arterial_seg.dcm", "export_Venous_seg.nii.gz", "labels.json"}
    assert int(hd.seg.segread(tmp_path / "out" / "export_Arterial_seg.dcm").NumberOfFrames) == 4
    venous_mask = nib.load(tmp_path / "out" / "export_Venous_seg.nii.gz")  # no Series UID to reference: NIfTI
    venous_volume = read_image(tmp_path / "export" / "PAT1" / "ST1" / "SE2")
    assert venous_mask.shape == venous_volume.shape == (8, 8, 5)
    np.testing.assert_allclose(venous_mask.affine, venous_volume.affine, atol=1e-6)


@pytest.mark.shared_data
def test_real_uid_named_ct_series_gives_one_mask_on_its_geometry(model_args, tmp_path, capsys):
    root = shared_data_dir()
    if root is None or not (root / "totalseg_ct_dicom" / "dicom").is_dir():
        pytest.skip("shared data (../shared/data/totalseg_ct_dicom or $IRIS_SHARED_DATA) is not available")
    case = root / "totalseg_ct_dicom"
    out = _segment(model_args, case / "dicom", tmp_path / "out", capsys)
    assert "1 segmented, 0 skipped, 0 failed" in out
    mask = nib.load(tmp_path / "out" / "dicom_seg.nii.gz")  # anonymised (no Study UID): NIfTI, not DICOM-SEG
    reference = nib.load(case / "segmentation.nii.gz")
    assert mask.shape == reference.shape == (512, 512, 20)
    np.testing.assert_allclose(mask.affine, reference.affine, atol=1e-3)
