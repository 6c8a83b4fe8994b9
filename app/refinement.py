"""Click / stroke refinement in the Correct & accept step: plain functions over Services, Session and ClickState."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app import display
from app.handlers import HandlerError, Session, class_index, current_volume, render_slice
from app.services import Services
from iris_engine.inference import VolumeSegmentation
from iris_engine.preprocess import to_canonical
from iris_engine.refinement import Click, RefineConfig

CLICK_MODES = ("positive", "negative")
MARK_COLORS = {True: (40, 220, 40), False: (230, 40, 40)}


@dataclass
class ClickState:
    """The clicks of one browser tab and the result they refine, from `base` (undo = pop); `groups`: the clicks
    of each step (a click or a stroke)."""

    base: VolumeSegmentation | None = None
    result_id: int | None = None
    masks_after: np.ndarray | None = None
    clicks: list[Click] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    config: RefineConfig = field(default_factory=RefineConfig)

    def __deepcopy__(self, memo: dict[int, Any]) -> ClickState:
        """Gradio deep-copies state values; the click state is kept by reference like the Session."""
        return self


def _current(services: Services, session: Session, state: ClickState) -> None:
    """Start a new click series when the result changed (new segmentation, other case, brush edits since)."""
    result = session.result
    if result is None or result.case_id != session.case_id:
        raise HandlerError("run a segmentation on this case first, then click on its errors")
    same = state.base is not None and state.result_id == id(result) and state.masks_after is not None \
        and np.array_equal(state.masks_after, result.masks)
    if not same:
        seg = result.segmentation
        state.base = VolumeSegmentation(seg.probabilities, result.masks.copy(), list(seg.class_names), seg.strategy,
                                        seg.model_version, embedding=seg.embedding, input_scale=seg.input_scale,
                                        slice_stride=seg.slice_stride)
        state.result_id, state.masks_after, state.clicks, state.groups = id(result), result.masks.copy(), [], []


def display_to_voxel(services: Services, session: Session, index: int, x: int, y: int) -> tuple[int, ...]:
    """A pixel (x right, y down) of the displayed (enlarged) axial slice as a voxel index of the case's own array."""
    volume = current_volume(services, session)
    canon, transform = to_canonical(volume)
    shown = display.view_slice(canon.array, "axial", index)
    scale = display.display_scale(shown.shape)
    row, col = int(y) // scale, int(x) // scale
    if not (0 <= row < shown.shape[0] and 0 <= col < shown.shape[1]):
        raise HandlerError(f"the click ({x}, {y}) lies outside the slice")
    marks = np.zeros(shown.shape, dtype=bool)
    marks[row, col] = True
    plane = display.unview_slice(marks, canon.ndim)
    full = np.zeros(canon.shape, dtype=bool)
    if canon.ndim == 3:
        full[:, :, int(np.clip(index, 0, canon.shape[2] - 1))] = plane
    else:
        full[:] = plane
    return tuple(int(v) for v in np.argwhere(transform.invert(full))[0])


def _apply(services: Services, session: Session, state: ClickState, steps: list[int]) -> None:
    """Recompute the refined masks from the base and all clicks (in `steps`, one per click or stroke; the engine
    keeps a sequential refiner's earlier steps), and show them as the result."""
    result = session.result
    if state.clicks:
        with services.lock:
            refined = services.segmenter.refine(current_volume(services, session), state.base, state.clicks,
                                                state.config, steps)
        result.masks = refined.masks.copy()
    else:
        result.masks = state.base.masks.copy()
    state.masks_after = result.masks.copy()


def _summary(session: Session, state: ClickState, class_name: str) -> str:
    k = class_index(session.result, class_name)
    positive = sum(c.positive for c in state.clicks)
    return (f"{len(state.clicks)} click(s) ({positive} positive, {len(state.clicks) - positive} negative): "
            f"**{class_name}** now {int(session.result.masks[k].sum())} voxels.")


def add_click(services: Services, session: Session, state: ClickState, class_name: str | None, index: int,
              x: int, y: int, mode: str) -> str:
    """A positive or negative click at a displayed pixel of axial slice `index`; the result updates at once."""
    return add_clicks(services, session, state, class_name, [display_to_voxel(services, session, index, x, y)], mode)


def add_stroke(services: Services, session: Session, state: ClickState, class_name: str | None, index: int,
               painted: dict[str, Any] | None, mode: str) -> str:
    """Every pixel of a stroke painted on axial slice `index` counts as a click of the mode (one undo step)."""
    volume = current_volume(services, session)
    canon, transform = to_canonical(volume)
    shape2d = display.view_slice(canon.array, "axial", index).shape
    plane = display.unview_slice(display.painted_mask(painted, shape2d), canon.ndim)
    if not plane.any():
        raise HandlerError("nothing painted: draw a short stroke first")
    full = np.zeros(canon.shape, dtype=bool)
    if canon.ndim == 3:
        full[:, :, int(index)] = plane
    else:
        full[:] = plane
    voxels = [tuple(int(v) for v in p) for p in np.argwhere(transform.invert(full))]
    return add_clicks(services, session, state, class_name, voxels, mode)


def add_clicks(services: Services, session: Session, state: ClickState, class_name: str | None,
               voxels: list[tuple[int, ...]], mode: str) -> str:
    """Clicks (one undo step) at voxels of the case's own grid."""
    if mode not in CLICK_MODES:
        raise HandlerError(f"click mode must be one of {', '.join(CLICK_MODES)}")
    _current(services, session, state)
    if not class_name:
        raise HandlerError("pick the result class to refine")
    class_index(session.result, class_name)
    new = [Click(v, mode == "positive", class_name) for v in voxels]
    state.clicks.extend(new)
    try:
        _apply(services, session, state, [*state.groups, len(new)])
    except BaseException:
        del state.clicks[-len(new):]
        raise
    state.groups.append(len(new))
    return _summary(session, state, class_name)


def undo_click(services: Services, session: Session, state: ClickState, class_name: str | None) -> str:
    """Take back the last click (or stroke) and recompute from the unclicked result."""
    result = session.result
    if result is None or state.base is None or state.result_id != id(result) or not state.clicks:
        raise HandlerError("no click to undo")
    if state.masks_after is None or not np.array_equal(state.masks_after, result.masks):
        raise HandlerError("the mask was edited with the brush since the last click; clicks can no longer be undone")
    del state.clicks[-(state.groups.pop() if state.groups else 1):]
    _apply(services, session, state, state.groups)
    return _summary(session, state, class_name or result.segmentation.class_names[0])


def click_view(services: Services, session: Session, state: ClickState, index: int, window: str,
               opacity: float) -> np.ndarray:
    """The axial slice with the result's overlay and this slice's clicks marked (green +, red -), enlarged."""
    image = render_slice(services, session, "axial", index, window, opacity)
    if session.result is not None and state.clicks and state.result_id == id(session.result):
        volume = current_volume(services, session)
        transform = to_canonical(volume)[1]
        for positive in (True, False):
            marks = np.zeros(volume.shape, dtype=bool)
            for click in (c for c in state.clicks if c.positive == positive):
                marks[click.position] = True
            for r, c in np.argwhere(display.view_slice(transform.apply(marks), "axial", index)):
                image[max(0, r - 1): r + 2, max(0, c - 1): c + 2] = MARK_COLORS[positive]
    return display.enlarge(image)
