"""Click / stroke refinement in the app: display pixel -> voxel, clicks update the mask, undo per click, accept."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from app import display
from app import handlers as h
from app import refinement as r
from app.handlers import HandlerError, Session
from iris_engine.preprocess import to_canonical
from iris_engine.refinement import RefineConfig


@pytest.fixture
def session(services, tmp_path: Path) -> Session:
    """A case with a flipped affine (so display, canonical and stored voxel orders differ) and a result."""
    image = np.zeros((32, 30, 6), dtype=np.float32)
    image[8:24, 10:22, :] = 100.0
    affine = np.diag([-2.0, 2.0, 3.0, 1.0])
    path = tmp_path / "blob.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(path))
    session = Session()
    h.load_case(services, session, [str(path)])
    value = h.editor_value(services, session, 2, "MR / auto")
    layer = np.zeros((*value["background"].shape[:2], 4), dtype=np.uint8)
    height, width = layer.shape[:2]
    layer[height // 4: height // 2, width // 3: 2 * width // 3, 3] = 255
    h.add_support(services, session, {**value, "layers": [layer]}, "blob", 2)
    h.run_segmentation(services, session, "One-shot")
    return session


def _display_xy(services, session: Session, voxel: tuple[int, int, int]) -> tuple[int, int]:
    """Where a stored voxel appears on the displayed axial slice (x right, y down), by rendering a marker."""
    volume = h.current_volume(services, session)
    marks = np.zeros(volume.shape, dtype=bool)
    marks[voxel] = True
    canon = to_canonical(volume)[1].apply(marks)
    shown = display.view_slice(canon, "axial", int(np.argwhere(canon)[0][2]))
    row, col = np.argwhere(shown)[0]
    scale = display.display_scale(shown.shape)
    return int(col) * scale + scale // 2, int(row) * scale + scale // 2


def test_display_pixels_map_back_to_the_stored_voxel(services, session: Session) -> None:
    for voxel in ((3, 4, 2), (30, 1, 2), (17, 25, 2)):
        x, y = _display_xy(services, session, voxel)
        assert r.display_to_voxel(services, session, 2, x, y) == voxel
    with pytest.raises(HandlerError, match="outside the slice"):
        r.display_to_voxel(services, session, 2, 10_000, 5)


def test_clicks_update_the_mask_undo_per_click_and_accept_stores_it(services, session: Session) -> None:
    state = r.ClickState(config=RefineConfig(method="local"))
    session.result.masks[:] = False
    before = session.result.masks.copy()
    inside = (16, 15, 2)
    message = r.add_click(services, session, state, "blob", 2, *_display_xy(services, session, inside), "positive")
    assert "1 click" in message and session.result.masks[0][inside]
    grown = session.result.masks.copy()
    assert grown[0][:, :, 2].sum() > 1 and grown[0][:, :, 2][8:24, 10:22].mean() > grown[0][:, :, 2].mean()
    r.add_click(services, session, state, "blob", 2, *_display_xy(services, session, (20, 18, 2)), "negative")
    assert not session.result.masks[0][20, 18, 2]
    image = r.click_view(services, session, state, 2, "MR / auto", 0.5)
    assert (image == r.MARK_COLORS[True]).all(axis=2).any() and (image == r.MARK_COLORS[False]).all(axis=2).any()
    r.undo_click(services, session, state, "blob")
    assert np.array_equal(session.result.masks, grown)
    r.undo_click(services, session, state, "blob")
    assert np.array_equal(session.result.masks, before)
    with pytest.raises(HandlerError, match="no click to undo"):
        r.undo_click(services, session, state, "blob")
    r.add_click(services, session, state, "blob", 2, *_display_xy(services, session, inside), "positive")
    refined = session.result.masks[0].copy()
    h.accept(services, session)
    correction = services.storage.corrections.list_for_case(session.case_id, status="accepted")[-1]
    assert np.array_equal(services.storage.corrections.load_mask(correction.id).astype(bool), refined)
    assert "blob" in services.segmenter.memory_bank


def test_a_stroke_is_one_undo_step_and_brush_edits_start_a_new_series(services, session: Session) -> None:
    state = r.ClickState(config=RefineConfig(method="local"))
    before = session.result.masks.copy()
    value = h.editor_value(services, session, 3, "MR / auto")
    layer = np.zeros((*value["background"].shape[:2], 4), dtype=np.uint8)
    layer[192:208, 150:300, 3] = 255  # one displayed pixel row (16 px per voxel here)
    r.add_stroke(services, session, state, "blob", 3, {**value, "layers": [layer]}, "negative")
    stroke = [c.position for c in state.clicks]
    assert len(stroke) > 3 and not any(session.result.masks[0][p] for p in stroke)
    r.undo_click(services, session, state, "blob")
    assert np.array_equal(session.result.masks, before) and state.clicks == []
    r.add_click(services, session, state, "blob", 2, *_display_xy(services, session, (16, 15, 2)), "positive")
    session.result.masks[0][:, :, 5] = ~session.result.masks[0][:, :, 5]  # a brush edit after the click
    edited = session.result.masks[0][:, :, 5].copy()
    with pytest.raises(HandlerError, match="edited with the brush"):
        r.undo_click(services, session, state, "blob")
    r.add_click(services, session, state, "blob", 0, *_display_xy(services, session, (5, 5, 0)), "negative")
    assert len(state.clicks) == 1 and np.array_equal(session.result.masks[0][:, :, 5], edited)


def test_each_click_and_stroke_reaches_the_engine_as_one_step(services, session: Session, monkeypatch) -> None:
    steps_seen = []
    refine = services.segmenter.refine

    def recording(query, result, clicks, config=None, steps=None):
        steps_seen.append(list(steps))
        return refine(query, result, clicks, config, steps)

    monkeypatch.setattr(services.segmenter, "refine", recording)
    state = r.ClickState(config=RefineConfig(method="local"))
    value = h.editor_value(services, session, 3, "MR / auto")
    layer = np.zeros((*value["background"].shape[:2], 4), dtype=np.uint8)
    layer[192:208, 150:300, 3] = 255
    r.add_stroke(services, session, state, "blob", 3, {**value, "layers": [layer]}, "negative")
    r.add_click(services, session, state, "blob", 2, *_display_xy(services, session, (16, 15, 2)), "positive")
    stroke = len(state.clicks) - 1
    r.undo_click(services, session, state, "blob")
    assert steps_seen == [[stroke], [stroke, 1], [stroke]]


def test_clicks_without_a_result_or_class_are_refused(services, session: Session) -> None:
    state = r.ClickState()
    with pytest.raises(HandlerError, match="pick the result class"):
        r.add_click(services, session, state, None, 2, 5, 5, "positive")
    with pytest.raises(HandlerError, match="click mode"):
        r.add_click(services, session, state, "blob", 2, 5, 5, "sideways")
    session.result = None
    with pytest.raises(HandlerError, match="run a segmentation"):
        r.add_click(services, session, state, "blob", 2, 5, 5, "positive")
    with pytest.raises(HandlerError, match="nothing painted"):
        r.add_stroke(services, session, state, "blob", 2, None, "positive")


def test_the_clicks_refine_at_the_input_scale_the_result_was_segmented_at(services, session: Session) -> None:
    session.result.segmentation = replace(session.result.segmentation, input_scale=2)  # as for a thin structure
    state = r.ClickState(config=RefineConfig(method="local"))
    r.add_click(services, session, state, "blob", 2, *_display_xy(services, session, (16, 15, 2)), "positive")
    assert state.base.input_scale == 2 and session.result.masks[0][16, 15, 2]
