"""App Propagate action without a browser: painted slices listed, propagate, fix a slice, propagate again, accept."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from app import handlers as h
from app import propagation as p
from app.handlers import HandlerError, Session


@pytest.fixture
def nifti(tmp_path: Path) -> Path:
    image = np.random.default_rng(0).normal(0, 5, (32, 32, 10)).astype(np.float32)
    image[8:24, 10:22, 2:8] += 100.0
    path = tmp_path / "blob.nii.gz"
    nib.save(nib.Nifti1Image(image, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    return path


def painted(services, session: Session, index: int) -> dict:
    """An editor value with a rectangle painted on the displayed slice."""
    value = h.editor_value(services, session, index, "MR / auto")
    layer = np.zeros((*value["background"].shape[:2], 4), dtype=np.uint8)
    height, width = layer.shape[:2]
    layer[height // 4: height // 2, width // 3: 2 * width // 3, 3] = 255
    return {**value, "layers": [layer]}


def test_propagate_fix_a_slice_propagate_again_and_accept(services, nifti: Path) -> None:
    session = Session()
    h.load_case(services, session, [str(nifti)])
    with pytest.raises(HandlerError, match="paint the structure"):
        p.run_propagation(services, session)
    for index in (3, 6):
        h.add_support(services, session, painted(services, session, index), "blob", index)
    assert p.painted_rows(services, session) == [[3, "blob", "painted"], [6, "blob", "painted"]]
    message = p.run_propagation(services, session)
    assert "painted slices [3, 6]" in message
    result = session.result
    assert result.segmentation.strategy == "propagation" and result.masks.shape == (1, 32, 32, 10)
    labels, names, _ = p.painted_label_map(services, session)
    assert names == ["blob"]
    np.testing.assert_array_equal(result.masks[0][:, :, [3, 6]], labels[:, :, [3, 6]] == 1)
    assert [row[:2] for row in p.slice_rows(services, session) if row[1] != "propagated"] == [[3, "painted"],
                                                                                             [6, "painted"]]

    h.apply_correction(services, session, "blob", 8, h.editor_value(services, session, 8, "MR / auto"))
    p.note_fixed_slice(session, 8)
    assert p.painted_rows(services, session)[-1] == [8, "(empty)", "fixed"]
    message = p.run_propagation(services, session)
    assert "painted slices [3, 6, 8]" in message
    masks = session.result.masks[0]
    assert not masks[:, :, 8:].any()  # the fixed empty slice stops the structure
    np.testing.assert_array_equal(masks[:, :, [3, 6]], labels[:, :, [3, 6]] == 1)
    assert "accepted" in h.accept(services, session)
    assert len(services.storage.corrections.list_for_case(session.case_id, status="accepted")) == 1


def test_supports_of_other_cases_are_not_painted_slices(services, nifti: Path) -> None:
    first, second = Session(), Session()
    h.load_case(services, first, [str(nifti)])
    h.add_support(services, first, painted(services, first, 4), "blob", 4)
    h.load_case(services, second, [str(nifti)])
    second.supports = list(first.supports)
    assert p.painted_rows(services, second) == []
    with pytest.raises(HandlerError, match="paint the structure"):
        p.run_propagation(services, second)
    assert second.result is None


def test_a_thin_painted_structure_is_propagated_at_twice_the_input_size_and_the_status_says_so(
        services, nifti: Path) -> None:
    session = Session()
    h.load_case(services, session, [str(nifti)])
    value = h.editor_value(services, session, 4, "MR / auto")
    layer = np.zeros((*value["background"].shape[:2], 4), dtype=np.uint8)
    voxel = layer.shape[0] // 32  # display pixels per voxel of the 32 x 32 slice
    layer[16 * voxel: 17 * voxel, 2 * voxel: -2 * voxel, 3] = 255  # a line one voxel thick
    h.add_support(services, session, {**value, "layers": [layer]}, "line", 4)
    message = p.run_propagation(services, session)
    assert "thin structure: read at twice the model's input size" in message
    assert session.result.segmentation.input_scale == 2
