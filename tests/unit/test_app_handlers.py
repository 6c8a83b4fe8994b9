"""App handlers without a browser: upload, support, one-shot, accept/undo with prototypes, export, restart."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from app import handlers as h
from app import training
from app.config import AppConfig
from app.handlers import HandlerError, Session
from app.services import build_services
from iris_engine.errors import IrisInputError


@pytest.fixture
def nifti(tmp_path: Path) -> Path:
    image = np.zeros((32, 32, 6), dtype=np.float32)
    image[8:24, 10:22, :] = 100.0
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


def test_upload_render_and_bad_file(services, nifti: Path, tmp_path: Path) -> None:
    session = Session()
    assert "blob" in h.load_case(services, session, [str(nifti)])
    assert h.slider_max(services, session, "axial") == 5
    image = h.render_slice(services, session, "coronal", 3, "CT bone", 0.5)
    assert image.ndim == 3 and image.shape[2] == 3
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(IrisInputError, match="unknown file type"):
        h.load_case(services, Session(), [str(bad)])


def test_support_segment_accept_undo_and_restart(services, nifti: Path, checkpoint: Path, tmp_path: Path) -> None:
    session = Session()
    h.load_case(services, session, [str(nifti)])
    with pytest.raises(HandlerError, match="nothing painted"):
        h.add_support(services, session, h.editor_value(services, session, 2, "MR / auto"), "blob", 2)
    h.add_support(services, session, painted(services, session, 2), "blob", 2)
    start = time.perf_counter()
    message = h.run_segmentation(services, session, "One-shot")
    assert time.perf_counter() - start < 10 and "finished" in message
    assert session.result.masks.shape == (1, 32, 32, 6)
    assert h.result_rows(services, session)[0][1].endswith("mL")
    version = services.model_version
    session.result.masks[:] = False
    h.apply_correction(services, session, "blob", 2, painted(services, session, 2))
    h.accept(services, session)
    first = services.storage.prototypes.get("blob", version)
    assert first is not None and "blob" in services.segmenter.memory_bank
    h.accept(services, session)
    assert services.storage.prototypes.get("blob", version).update_count == 2
    assert [r[1] for r in h.prototype_rows(services, "blob")] == ["current", "before accept"]
    assert "restored" in h.undo_accept(services, session)
    assert services.storage.prototypes.get("blob", version).embedding == first.embedding
    h.run_segmentation(services, session, "Memory bank", ["blob"])
    assert "no longer used" in h.undo_accept(services, session)
    assert "blob" not in services.segmenter.memory_bank
    h.accept(services, session)
    assert ("blob · blob · accepted mask 3", "correction:3") in h.stored_supports(services)
    nifti_out = h.export_mask(services, session, "NIfTI")
    assert np.allclose(nib.load(str(nifti_out)).affine, np.diag([2.0, 2.0, 3.0, 1.0]))
    with pytest.raises(HandlerError, match="DICOM-SEG needs"):
        h.export_mask(services, session, "DICOM-SEG")
    assert h.export_mask(services, session, "PNG", 2).suffix == ".png"
    restarted = build_services(AppConfig(data_dir=tmp_path / "data", weights=checkpoint), with_demo=False)
    assert "blob" in restarted.segmenter.memory_bank
    restarted.close()


def test_accepting_a_thin_structure_keeps_its_fine_entry_through_undo_and_restart(
        services, nifti: Path, checkpoint: Path, tmp_path: Path) -> None:
    session = Session()
    h.load_case(services, session, [str(nifti)])
    h.add_support(services, session, painted(services, session, 2), "blob", 2)
    h.run_segmentation(services, session, "One-shot")
    session.result.masks[:] = False
    session.result.masks[0, 16, 4:28, 2] = True  # a one-voxel wire on one slice: thin on the model grid
    bank = services.segmenter.memory_bank
    h.accept(services, session)
    first = services.storage.prototypes.get("blob", services.model_version).embedding
    assert bank.has_fine("blob") and bank.input_scale("blob") == 2
    h.accept(services, session)
    assert services.segmenter.memory_bank.count("blob") == 2 and services.segmenter.memory_bank.has_fine("blob")
    assert h.run_segmentation(services, session, "Memory bank", ["blob"])
    assert session.result.segmentation.input_scale == 2
    assert "restored" in h.undo_accept(services, session)
    restored = services.segmenter.memory_bank
    assert restored.has_fine("blob") and restored.entry_bytes("blob", services.model_version) == first
    restarted = build_services(AppConfig(data_dir=tmp_path / "data", weights=checkpoint), with_demo=False)
    assert restarted.segmenter.memory_bank.has_fine("blob")
    assert torch.equal(restarted.segmenter.memory_bank.get("blob", scale=2).tokens,
                       restored.get("blob", scale=2).tokens)
    restarted.close()


def test_correction_and_delete_confirmation(services, nifti: Path) -> None:
    session = Session()
    h.load_case(services, session, [str(nifti)])
    h.add_support(services, session, painted(services, session, 1), "blob", 1)
    h.run_segmentation(services, session, "Context ensemble")
    h.apply_correction(services, session, "blob", 1, painted(services, session, 1))
    assert session.result.masks[0][:, :, 1].sum() > 0
    with pytest.raises(HandlerError, match="confirm"):
        h.delete_case(services, session, session.case_id, False)
    case_id = session.case_id
    h.delete_case(services, session, case_id, True)
    assert session.case_id is None and services.storage.cases.list() == []


def test_missing_weights_fall_back_to_untrained(tmp_path: Path) -> None:
    services = build_services(AppConfig(data_dir=tmp_path / "d", weights=tmp_path / "none.pt"), with_demo=False)
    assert services.untrained and "UNTRAINED" in services.warning
    services.close()


def test_training_run_succeeds_and_switches_weights(services, nifti: Path) -> None:
    session = Session()
    h.load_case(services, session, [str(nifti)])
    h.add_support(services, session, painted(services, session, 2), "blob", 2)
    with pytest.raises(HandlerError, match="only one labelled slice"):  # refused up front, no worker started
        training.start_training(services, [session.case_id], 4)
    assert services.storage.runs.list()[-1].status == "cancelled"
    h.add_support(services, session, painted(services, session, 4), "blob", 4)
    assert training.curated_cases(services)
    run = training.start_training(services, [session.case_id], 4)
    deadline = time.time() + 240
    while services.storage.runs.get(run.id).status == "running" and time.time() < deadline:
        time.sleep(1)
        message, rows = training.poll_training(services, run.id)
    assert services.storage.runs.get(run.id).status == "succeeded", message
    assert rows and rows[-1][0] == 4
    old = services.model_version
    assert "Now using" in training.activate_model(services, run.id)
    assert services.model_version != old and "blob" in services.segmenter.memory_bank


def test_a_thin_support_reports_the_threshold_it_calibrated(services, nifti: Path) -> None:
    session = Session()
    h.load_case(services, session, [str(nifti)])
    value = h.editor_value(services, session, 2, "MR / auto")
    layer = np.zeros((*value["background"].shape[:2], 4), dtype=np.uint8)
    height, width = layer.shape[:2]
    layer[height // 2: height // 2 + height // 32 + 1, width // 4: 3 * width // 4, 3] = 255  # about one voxel thick
    h.add_support(services, session, {**value, "layers": [layer]}, "wire", 2)
    message = h.run_segmentation(services, session, "One-shot")
    assert session.result.segmentation.input_scale == 2
    threshold = session.result.segmentation.embedding.thresholds()[0]
    assert f"read at twice the model's input size; threshold taken from the support: {threshold:.2f}" in message
    assert session.result.segmentation.slice_stride == 2  # 3 mm slices: one in two keeps them within 7.5 mm
    assert "one slice in 2 segmented, those between interpolated in z" in message
