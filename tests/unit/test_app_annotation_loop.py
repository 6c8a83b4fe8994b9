"""Issue 14 without a browser: editor canvas geometry, corrections that change only what was drawn, supports kept
across cases, label-file supports, views with the spacing's aspect, manual windows, sizes in px for photos, the
grouped memory-bank summary, carried-over bank classes, the data-folder lock and run_app's early refusals."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from app import display
from app import handlers as h
from app.editor_canvas import CANVAS, from_canvas, place, to_canvas, touched
from app.handlers import HandlerError, Session
from app.startup import AlreadyRunning, lock_data_dir
from app.train_worker import carry_over
from iris_engine.errors import IrisInputError

ROOT = Path(__file__).resolve().parents[2]
def nifti(path: Path, shape: tuple[int, ...], spacing: tuple[float, float, float] = (1.5, 1.0, 4.0)) -> Path:
    image = np.zeros(shape, dtype=np.float32)
    image[shape[0] // 5: shape[0] // 2, shape[1] // 4: 3 * shape[1] // 4] = 100.0
    nib.save(nib.Nifti1Image(image, np.diag([*spacing, 1.0])), str(path))
    return path


@pytest.mark.parametrize("shape", [(200, 150), (150, 200), (37, 91), (512, 512), (700, 300), (1, 9)])
def test_canvas_round_trip_is_exact(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    mask = rng.random(shape) > 0.5
    placement = place(shape)
    canvas = to_canvas(mask, placement, False)
    assert canvas.shape == (CANVAS, CANVAS)
    assert placement.height <= CANVAS and placement.width <= CANVAS and max(placement.height, placement.width) == \
        CANVAS
    if min(placement.height / shape[0], placement.width / shape[1]) >= 1:  # every slice pixel is shown
        assert np.array_equal(from_canvas(canvas, placement), mask)
    assert not touched(canvas, canvas, placement).any()


def test_canvas_maps_a_painted_rectangle_to_its_slice_pixels() -> None:
    placement = place((150, 200))  # 150 rows, 200 cols: 384 x 512 px, 64 px letterbox above and below
    assert (placement.top, placement.left, placement.height, placement.width) == (64, 0, 384, 512)
    painted = np.zeros((CANVAS, CANVAS), dtype=bool)
    painted[64 + 10 * 384 // 150: 64 + 20 * 384 // 150, 30 * 512 // 200: 40 * 512 // 200] = True
    painted[:64] = True  # paint on the letterbox is not on the slice
    rows, cols = np.nonzero(from_canvas(painted, placement))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 19, 30, 39)
    with pytest.raises(IrisInputError, match="expected 512x512"):
        from_canvas(np.zeros((300, 400), dtype=bool), placement)


def test_no_edit_keeps_the_mask_and_an_erase_changes_only_its_pixels(services, tmp_path: Path) -> None:
    session = Session()
    h.load_case(services, session, [str(nifti(tmp_path / "wide.nii.gz", (150, 700, 5)))])
    h.add_support(services, session, painted(services, session, 2), "blob", 2)
    h.run_segmentation(services, session, "One-shot")
    masks = np.zeros_like(session.result.masks)
    masks[0, 20:120, 100:600, :] = True
    session.result.masks = masks.copy()
    value = h.load_correction(services, session, "blob", 2, "MR / auto")
    assert value["background"].shape == (CANVAS, CANVAS, 3) and value["layers"][0].shape == (CANVAS, CANVAS, 4)
    assert "0 voxels added, 0 removed" in h.apply_correction(services, session, "blob", 2, value)
    assert np.array_equal(session.result.masks, masks)  # 700 px wide: downscaled, yet nothing changed
    before = h._result_plane(services, session, "blob", 2)
    placement = place(before.shape)
    rows, cols = np.nonzero(before)
    y = int(placement.top + rows.mean() * placement.scale)  # erase a 40 px square at the mask's centre
    x = int(placement.left + cols.mean() * placement.scale)
    layer = value["layers"][0].copy()
    layer[y - 20: y + 20, x - 20: x + 20] = 0
    message = h.apply_correction(services, session, "blob", 2, {**value, "layers": [layer]})
    assert "0 voxels added" in message and not (session.result.masks & ~masks).any()
    changed = session.result.masks != masks
    assert changed.any() and set(np.nonzero(changed)[3]) == {2}  # only slice 2
    rows, cols = np.nonzero(before != h._result_plane(services, session, "blob", 2))
    s = placement.scale
    assert rows.min() >= (y - 20 - placement.top) / s - 1 and rows.max() <= (y + 20 - placement.top) / s + 1
    assert cols.min() >= (x - 20 - placement.left) / s - 1 and cols.max() <= (x + 20 - placement.left) / s + 1


def painted(services, session: Session, index: int) -> dict:
    value = h.editor_value(services, session, index, "MR / auto")
    layer = np.zeros((CANVAS, CANVAS, 4), dtype=np.uint8)
    layer[200:260, 150:300, 3] = 255
    return {**value, "layers": [layer]}


def test_supports_stay_across_cases_and_one_can_be_removed(services, tmp_path: Path) -> None:
    session = Session()
    h.load_case(services, session, [str(nifti(tmp_path / "a.nii.gz", (40, 50, 4)))])
    first = session.case_id
    h.add_support(services, session, painted(services, session, 1), "organ", 1)
    h.load_case(services, session, [str(nifti(tmp_path / "b.nii.gz", (60, 30, 4)))])
    assert session.case_id != first and [r.case_id for r in session.supports] == [first]
    h.add_support(services, session, painted(services, session, 2), "organ", 2)
    assert len(h.support_rows(session)) == 2
    assert "removed" in h.remove_support(session, 0) and [r.case_id for r in session.supports] == [session.case_id]
    with pytest.raises(HandlerError, match="click a support"):
        h.remove_support(session, 5)


def test_a_stale_slice_change_draws_nothing(services, tmp_path: Path, monkeypatch) -> None:
    """The slider's change of a case opened before (an index that case had, or answered after the next case
    opened) must not put a slice, or its paint index, in the support editor."""
    session = Session()
    h.load_case(services, session, [str(nifti(tmp_path / "big.nii.gz", (40, 50, 30)))])
    big = session.case_id
    h.load_case(services, session, [str(nifti(tmp_path / "small.nii.gz", (60, 30, 8)))])
    small = session.case_id
    session.editor_shows = (small, 3, "MR / auto")
    assert h.redraw_slice(services, session, "axial", 20, "MR / auto", 0.5, "overlay", None) is None
    assert h.view_image(services, session, "axial", 20, "MR / auto", 0.5, "overlay", None) is None
    assert h.view_image(services, session, "coronal", 20, "MR / auto", 0.5, "overlay", None) is not None
    assert session.editor_shows == (small, 3, "MR / auto")

    kept = h.redraw_slice(services, session, "axial", 3, "MR / auto", 0.5, "overlay", None)
    assert kept is not None and kept.editor is None  # the slice the editor shows: its paint stays
    moved = h.redraw_slice(services, session, "axial", 5, "MR / auto", 0.5, "overlay", None)
    assert moved is not None and moved.editor is not None and session.editor_shows == (small, 5, "MR / auto")
    assert moved.image.shape[:2] == display.view_slice(np.zeros((60, 30, 8)), "axial", 5).shape

    draw = h.render_slice

    def open_another_case_meanwhile(*args, **kwargs):
        image = draw(*args, **kwargs)
        h.open_case(services, session, big)
        return image

    monkeypatch.setattr(h, "render_slice", open_another_case_meanwhile)
    assert h.redraw_slice(services, session, "axial", 6, "MR / auto", 0.5, "overlay", None) is None
    assert session.case_id == big and session.editor_shows == (small, 5, "MR / auto")
    h.open_case(services, session, small)
    assert h.view_image(services, session, "axial", 6, "MR / auto", 0.5, "overlay", None) is None


def noisy_nifti(path: Path, shape: tuple[int, int, int], seed: int) -> Path:
    """Every slice differs (a neighbouring slice's picture is not this one's)."""
    image = np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.diag([1.5, 1.0, 4.0, 1.0])), str(path))
    return path


def test_paint_on_a_picture_the_editor_no_longer_shows_is_refused(services, tmp_path: Path) -> None:
    """The editors' own Undo brings back an earlier slice's or case's picture (and Clear removes it) while the paint
    would be stored on the slice drawn last: such paint is refused, nothing is stored, and the slice is drawn again."""
    session = Session()
    h.load_case(services, session, [str(noisy_nifti(tmp_path / "before.nii.gz", (40, 50, 6), 1))])
    other_case_picture = h.editor_value(services, session, 2, "MR / auto")["background"]
    h.load_case(services, session, [str(noisy_nifti(tmp_path / "open.nii.gz", (40, 50, 6), 2))])
    session.editor_shows = (session.case_id, 2, "MR / auto")  # what opening the case or moving the slider drew
    stroke = painted(services, session, 2)
    slice_3 = h.editor_value(services, session, 3, "MR / auto")["background"]
    for picture in (slice_3, other_case_picture, None):
        with pytest.raises(h.StaleEditor, match="no longer shows slice 2"):
            h.add_support(services, session, {**stroke, "background": picture}, "organ", 2)
    assert not services.storage.annotations.list_for_case(session.case_id) and not session.supports
    with pytest.raises(h.StaleEditor):  # the paint index is not the slice the editor was given
        h.add_support(services, session, painted(services, session, 4), "organ", 4)

    redrawn = h.support_editor(services, session, 4, session.editor_shows[2])
    assert session.editor_shows == (session.case_id, 4, "MR / auto")
    assert np.array_equal(redrawn["background"], h.editor_value(services, session, 4, "MR / auto")["background"])
    assert "Support added" in h.add_support(services, session, {**redrawn, "layers": stroke["layers"]}, "organ", 4)

    h.run_segmentation(services, session, "One-shot")
    masks = session.result.masks.copy()
    loaded = h.load_correction(services, session, "organ", 4, "MR / auto")
    erased = {**loaded, "layers": [np.zeros_like(loaded["layers"][0])]}
    with pytest.raises(h.StaleEditor, match="no longer shows slice 4"):
        h.apply_correction(services, session, "organ", 4, {**erased, "background": slice_3})
    assert np.array_equal(session.result.masks, masks)
    assert "updated" in h.apply_correction(services, session, "organ", 4, erased)


def test_label_file_support_checked_against_the_case(services, tmp_path: Path) -> None:
    session = Session()
    h.load_case(services, session, [str(nifti(tmp_path / "c.nii.gz", (40, 50, 4)))])
    labels = np.zeros((40, 50, 4), dtype=np.uint8)
    labels[5:15, 10:20, 1:3] = 3
    good = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.diag([1.5, 1.0, 4.0, 1.0])), str(good))
    message = h.add_label_file_support(services, session, str(good), 3, "kidney")
    assert "label 3 (200 voxels)" in message and session.supports[-1].class_name == "kidney"
    stored = services.storage.annotations.load_mask(session.supports[-1].record_id)
    assert np.array_equal(stored.astype(bool), labels == 3)
    with pytest.raises(HandlerError, match=r"no voxel with label 2 \(labels present: 3\)"):
        h.add_label_file_support(services, session, str(good), 2, "kidney")
    wrong = tmp_path / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((40, 50, 5), dtype=np.uint8), np.eye(4)), str(wrong))
    with pytest.raises(HandlerError, match="does not match image shape") as caught:
        h.add_label_file_support(services, session, str(wrong), 1, "kidney")
    assert str(tmp_path) not in str(caught.value)
    with pytest.raises(HandlerError, match="name the class"):
        h.add_label_file_support(services, session, str(good), 3, " ")
    assert len(session.supports) == 1


def test_several_image_files_are_several_cases(services, tmp_path: Path) -> None:
    session = Session()
    files = [nifti(tmp_path / "one.nii.gz", (20, 30, 4)), nifti(tmp_path / "two.nii.gz", (30, 20, 5))]
    message = h.load_case(services, session, [str(f) for f in files])
    assert "one" in message and "two" in message
    assert sorted(c.name for c in services.storage.cases.list()) == ["one", "two"]


def test_photo_sizes_in_pixels_and_grouped_bank(services, tmp_path: Path) -> None:
    photo = tmp_path / "skin.png"
    rgb = np.zeros((60, 80, 3), dtype=np.uint8)
    rgb[20:40, 30:60] = 200
    Image.fromarray(rgb).save(photo)
    session = Session()
    h.load_case(services, session, [str(photo)])
    h.add_support(services, session, painted(services, session, 0), "lesion", 0)
    h.run_segmentation(services, session, "One-shot")
    size = h.result_rows(services, session)[0][1]
    assert size.endswith(" px") and "mm" not in size and "mL" not in size
    bank = services.segmenter.memory_bank
    bank.update("chaos_mr/liver", torch.ones(4, 8))
    bank.update("chaos_mr/spleen", torch.ones(4, 8))
    bank.update("drive/vessel", torch.ones(4, 8), fine_tokens=torch.ones(4, 8))
    summary = h.bank_summary(services)
    assert "<summary>chaos_mr (2)</summary>liver (1), spleen (1)" in summary
    assert "<summary>drive (1)</summary>vessel (1, 256 px)" in summary
    assert "background:" in h.legend(services, session) and "lesion" in h.legend(services, session)


def test_views_keep_the_spacing_aspect(services, tmp_path: Path) -> None:
    session = Session()
    h.load_case(services, session, [str(nifti(tmp_path / "thick.nii.gz", (40, 50, 6), (1.0, 1.0, 7.7)))])
    coronal = h.render_slice(services, session, "coronal", 25, "MR / auto", 0.5)
    axial = h.render_slice(services, session, "axial", 3, "MR / auto", 0.5)
    assert coronal.shape[:2] == (round(6 * 7.7), 40) and axial.shape[:2] == (50, 40)
    assert display.pixel_mm((1.0, 2.0, 7.7), "sagittal") == (7.7, 2.0)


def test_manual_window() -> None:
    image = np.array([[0.0, 40.0, 80.0]])
    assert display.manual_window(40, 80) == "40/80"
    assert display.window_to_uint8(image, "40/80").tolist() == [[0, 128, 255]]
    with pytest.raises(IrisInputError, match="positive width"):
        display.window_to_uint8(image, "40/0")
    with pytest.raises(IrisInputError, match="positive width"):
        display.manual_window(40, None)


def test_cancel_without_a_run_says_so() -> None:
    assert h.cancel_segmentation(Session()).startswith("Nothing to cancel")


def test_fine_tuned_bank_keeps_every_base_class() -> None:
    base = {"momentum": 0.9, "embeddings": {"chaos_mr/liver": torch.zeros(2), "spleen": torch.zeros(2),
                                            "drive/vessel": torch.zeros(2)},
            "counts": {"chaos_mr/liver": 3, "spleen": 1, "drive/vessel": 2},
            "fine_embeddings": {"drive/vessel": torch.full((2,), 5.0), "spleen": torch.full((2,), 5.0)}}
    fresh = {"embeddings": {"spleen": torch.ones(2)}, "counts": {"spleen": 7}, "fine_embeddings": {}}
    merged = carry_over(base, fresh)
    assert set(merged["embeddings"]) == {"chaos_mr/liver", "spleen", "drive/vessel"}
    assert merged["counts"] == {"chaos_mr/liver": 3, "spleen": 7, "drive/vessel": 2}
    assert merged["embeddings"]["spleen"].sum() == 2
    assert set(merged["fine_embeddings"]) == {"drive/vessel"}  # a re-encoded class drops the base's fine entry


def test_one_studio_per_data_folder(tmp_path: Path) -> None:
    held = lock_data_dir(tmp_path)
    with pytest.raises(AlreadyRunning, match="already using the data folder"):
        lock_data_dir(tmp_path)
    held.close()
    lock_data_dir(tmp_path).close()


@pytest.mark.parametrize(("args", "message"), [(["--max-voxels", "0"], "must be positive"),
                                               (["--port", "70000"], "--port must be between"),
                                               (["--device", "gpu"], "--device must be")])
def test_run_app_refuses_bad_arguments_before_loading_anything(tmp_path: Path, args: list[str], message: str) -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(ROOT / "run_app.py"), *args, "--data-dir", str(tmp_path / "d")],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "d").exists()  # no database, no demo case, no model
    print(f"refused in {time.monotonic() - started:.1f} s")
