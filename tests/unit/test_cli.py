"""`iris` argument handling, input discovery and output naming (no model needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from iris_engine import cli
from iris_engine.errors import IrisInputError
from iris_engine.inputs import BESIDE_SERIES
from iris_engine.io.volume import Volume
from tests.dicom_factory import SeriesSpec, write_series


def test_python_m_help_lists_the_subcommands():
    result = subprocess.run([sys.executable, "-m", "iris_engine", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("segment", "export", "evaluate", "train"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["segment", "--output", "out"], "the following arguments are required: --input"),
        (["segment", "--input", "x", "--output", "o", "--batch-size", "0"], "must be >= 1"),
        (["segment", "--input", "x", "--output", "o", "--format", "jpeg"], "invalid choice: 'jpeg'"),
        (["segment", "--input", "x", "--output", "o", "--support", "only-one"], "expected 2 arguments"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_argument_errors_exit_2_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_input_and_support_rules_are_usage_errors(tmp_path, capsys):
    assert cli.main(["segment", "--input", str(tmp_path / "nope"), "--output", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["segment", "--strategy", "one_shot", "--input", str(tmp_path), "--output", str(tmp_path)]) == 2
    assert "one_shot needs at least one --support" in capsys.readouterr().err


def test_train_is_delegated_to_the_trainer(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    assert "usage: iris train" in capsys.readouterr().out


def test_discover_inputs_expands_folders_and_skips_hidden_files(tmp_path):
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    series = tmp_path / "series"
    write_series(series, SeriesSpec(slices=3))
    (series / "README").write_text("beside the series")
    items = cli.discover_inputs([tmp_path])
    assert [(i.name, i.path, i.skip_reason) for i in items] == [
        ("a.nii.gz", tmp_path / "a.nii.gz", ""), ("b.png", tmp_path / "b.png", ""),
        ("series/README", series / "README", BESIDE_SERIES), (tmp_path.name, tmp_path, "")]
    assert len(items[-1].series.datasets) == 3
    alone = cli.discover_inputs([series])
    assert [(i.name, i.skip_reason) for i in alone] == [("README", BESIDE_SERIES), ("series", "")]
    assert cli.discover_inputs([tmp_path / "b.png"])[0].path == tmp_path / "b.png"


def _dataset(referable: bool) -> Dataset:
    """A DICOM header with (or, anonymised, without) the UIDs a DICOM-SEG references."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.3"
    ds.StudyInstanceUID = "1.2" if referable else ""
    return ds


@pytest.mark.parametrize(
    ("name", "fmt", "metadata", "expected"),
    [
        ("scan.nii.gz", "auto", {}, ("scan_seg.nii.gz", "nifti")),
        ("photo.JPG", "auto", {}, ("photo_seg.png", "png")),
        ("arr.npy", "auto", {}, ("arr_seg.npy", "npy")),
        ("series", "auto", {"dicom_datasets": [_dataset(referable=True)]}, ("series_seg.dcm", "dicom-seg")),
        ("anon", "auto", {"dicom_datasets": [_dataset(referable=False)]}, ("anon_seg.nii.gz", "nifti")),
        ("scan.nii", "png", {}, ("scan_seg.png", "png")),
    ],
)
def test_output_path(name, fmt, metadata, expected):
    volume = Volume(np.zeros((4, 4), np.float32), metadata=metadata)
    path, chosen = cli.output_path(Path(name), volume, fmt, Path("out"))
    assert (path.name, chosen) == expected and path.parent == Path("out")


def test_bank_key_matches_exact_names_then_unique_suffixes():
    stored = ["Task03_Liver/liver", "Task09_Spleen/spleen", "Task10_Colon/tumour", "Task07_Pancreas/tumour"]
    assert cli.bank_key("Task03_Liver/liver", stored) == "Task03_Liver/liver"
    assert cli.bank_key("Spleen", stored) == "Task09_Spleen/spleen"
    with pytest.raises(IrisInputError, match="ambiguous"):
        cli.bank_key("tumour", stored)


def test_label_map_prefers_the_most_probable_class_where_masks_overlap():
    probabilities = np.array([[[0.9, 0.6, 0.1]], [[0.2, 0.8, 0.3]]])
    labels = cli._label_map(probabilities, probabilities >= 0.5)
    assert labels.tolist() == [[1, 2, 0]]


def test_support_masks_with_two_values_count_as_one_class():
    assert cli._support_label_map(np.array([[0, 255]])).tolist() == [[0, 1]]
    assert cli._support_label_map(np.array([[0, 2]])).tolist() == [[0, 1]]
    assert cli._support_label_map(np.array([[0, 1, 2]])).tolist() == [[0, 1, 2]]
