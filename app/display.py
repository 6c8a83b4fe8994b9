"""Pixels for the browser: slicing along a view, window/level presets, colour overlays, editor masks."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.editor_canvas import LETTERBOX, Placement, from_canvas, place, to_canvas
from iris_engine.errors import IrisInputError

VIEWS = ("axial", "coronal", "sagittal")
VIEW_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}
WINDOWS: dict[str, tuple[float, float] | None] = {
    "CT soft tissue": (40.0, 400.0),
    "CT lung": (-600.0, 1500.0),
    "CT bone": (400.0, 1800.0),
    "MR / auto": None,
}
STROKE_ALPHA = 140  # of 255: masks and brush strokes in the editors let the anatomy show through
MIN_DISPLAY = 512  # px: small slices are shown (and painted on) at least about this large
SHOWN_TOLERANCE = 0.001  # of a returned editor picture's pixels that may differ from the one sent (a neighbouring
# slice of a noisy test volume differs on about 9%)


def default_window(modality: str | None) -> str:
    return "CT soft tissue" if modality == "CT" else "MR / auto"


def depth(shape: tuple[int, ...], view: str) -> int:
    """Number of slices of a canonical array along a view (1 for 2D images)."""
    return shape[VIEW_AXIS[view]] if len(shape) == 3 else 1


def view_slice(array: np.ndarray, view: str, index: int) -> np.ndarray:
    """A 2D display slice (superior/anterior up) of a canonical array, or a 2D image as is."""
    if array.ndim == 2:
        return array
    index = int(np.clip(index, 0, array.shape[VIEW_AXIS[view]] - 1))
    return np.rot90(np.take(array, index, axis=VIEW_AXIS[view]))


def unview_slice(image: np.ndarray, ndim: int) -> np.ndarray:
    """Inverse of view_slice's rotation: a display-oriented 2D array back to array axes."""
    return image if ndim == 2 else np.rot90(image, -1)


def parse_window(preset: str | None) -> tuple[float, float] | None:
    """(level, width) of a preset name or of a manual 'level/width' (e.g. '40/400'); None: automatic."""
    if not preset or preset in WINDOWS:
        return WINDOWS.get(preset or "")
    level, sep, width = str(preset).partition("/")
    try:
        window = (float(level), float(width))
    except ValueError:
        window = None
    if not sep or window is None or not np.isfinite(window).all() or window[1] <= 0:
        raise IrisInputError(f"window {preset!r}: pick a preset or type level/width with a positive width, "
                             "e.g. 40/400")
    return window


def manual_window(level: float | None, width: float | None) -> str:
    """The window value for a manual level and width."""
    if level is None or width is None or not np.isfinite([level, width]).all() or width <= 0:
        raise IrisInputError("manual window: give a level and a positive width")
    return f"{level:g}/{width:g}"


def pixel_mm(spacing: tuple[float, ...], view: str) -> tuple[float, float]:
    """(row, column) pixel size in mm of a canonical volume's slice in a view (as view_slice orients it)."""
    kept = [a for a in range(3) if a != VIEW_AXIS[view]]
    return float(spacing[kept[1]]), float(spacing[kept[0]])


def with_aspect(image: np.ndarray, row_mm: float, col_mm: float) -> np.ndarray:
    """Stretch rows or columns (nearest neighbour, never shrinking) so pixels show at their physical aspect."""
    if row_mm <= 0 or col_mm <= 0 or abs(row_mm / col_mm - 1) < 0.05:
        return image
    rows, cols = image.shape[:2]
    if row_mm > col_mm:
        index = np.minimum((np.arange(round(rows * row_mm / col_mm)) + 0.5) * col_mm / row_mm, rows - 1)
        return image[index.astype(int)]
    index = np.minimum((np.arange(round(cols * col_mm / row_mm)) + 0.5) * row_mm / col_mm, cols - 1)
    return image[:, index.astype(int)]


def window_to_uint8(image: np.ndarray, preset: str) -> np.ndarray:
    """Grey levels 0..255 with a window (preset or manual 'level/width') or the 1st..99th percentile."""
    window = parse_window(preset)
    if window is None:
        lo, hi = np.percentile(image, (1.0, 99.0)) if image.size else (0.0, 1.0)
    else:
        lo, hi = window[0] - window[1] / 2, window[0] + window[1] / 2
    if hi <= lo:
        return np.zeros(image.shape, dtype=np.uint8)
    return (np.clip((image - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def overlay(grey: np.ndarray, masks: np.ndarray, colors: list[str], opacity: float) -> np.ndarray:
    """RGB image: the grey slice with each (H, W) mask blended in its class colour."""
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    for mask, color in zip(masks, colors, strict=True):
        rgb[mask] = (1 - opacity) * rgb[mask] + opacity * np.asarray(hex_to_rgb(color), dtype=np.float32)
    return rgb.round().astype(np.uint8)


def heatmap(grey: np.ndarray, values: np.ndarray, opacity: float) -> np.ndarray:
    """Values in [0, 1] as a blue-to-red heat map over the grey slice."""
    values = np.clip(values, 0, 1)[..., None]
    heat = np.concatenate([values, 1 - np.abs(2 * values - 1), 1 - values], axis=2) * 255
    alpha = opacity * (values > 0.02)
    return ((1 - alpha) * grey[..., None] + alpha * heat).round().astype(np.uint8)


def display_scale(shape: tuple[int, int]) -> int:
    """Integer upscaling so small slices are large enough to paint on."""
    return max(1, MIN_DISPLAY // max(shape))


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    return image if scale == 1 else np.kron(image, np.ones((scale, scale) + (1,) * (image.ndim - 2), dtype=image.dtype))


def enlarge(image: np.ndarray) -> np.ndarray:
    """A rendered slice upscaled (nearest neighbour, whole pixels) for display only, like the editors' background."""
    return upscale(image, display_scale(image.shape[:2]))


def mask_layer(mask: np.ndarray, color: str, placement: Placement, alpha: int = 255) -> np.ndarray:
    """An RGBA canvas layer showing a slice mask in a colour (transparent elsewhere)."""
    layer = np.zeros((*mask.shape, 4), dtype=np.uint8)
    layer[mask] = (*hex_to_rgb(color), alpha)
    return to_canvas(layer, placement)


def editor_background(grey: np.ndarray) -> np.ndarray:
    """The RGB canvas an editor shows: the slice scaled to fit, letterboxed."""
    return to_canvas(np.repeat(grey[..., None], 3, axis=2), place(grey.shape), LETTERBOX)


def shows_background(editor_value: dict[str, Any] | None, background: np.ndarray) -> bool:
    """True if the picture an editor sent back with its paint is `background`, the canvas it was given (the browser
    returns it losslessly; at most SHOWN_TOLERANCE of its pixels may differ by more than 2 grey levels)."""
    shown = None if not editor_value else editor_value.get("background")
    if shown is None:
        return False
    shown = np.asarray(shown)
    if shown.ndim != 3 or shown.shape[:2] != background.shape[:2] or shown.shape[2] < 3:
        return False
    differs = (np.abs(shown[..., :3].astype(np.int16) - background[..., :3].astype(np.int16)) > 2).any(axis=2)
    return bool(differs.mean() <= SHOWN_TOLERANCE)


def painted_canvas(editor_value: dict[str, Any] | None) -> np.ndarray | None:
    """Pixels painted in any editor layer (alpha > 0) on the editor's canvas; None when nothing was drawn."""
    if not editor_value or not editor_value.get("layers"):
        return None
    painted = None
    for layer in editor_value["layers"]:
        if layer is None:
            continue
        array = np.asarray(layer)
        if array.dtype.kind not in "biuf" or array.ndim not in (2, 3) or array.size == 0 \
                or (array.dtype.kind == "f" and not np.isfinite(array).all()):
            raise IrisInputError(f"the painted layer is not an image (shape {array.shape}, {array.dtype}); "
                                 "paint on the slice again")
        if array.ndim == 3:
            alpha = array[..., 3] > 0 if array.shape[2] == 4 else (array > 0).any(axis=2)
        else:
            alpha = array > 0
        if painted is not None and painted.shape != alpha.shape:
            raise IrisInputError(f"the editor's layers differ in size ({painted.shape} and {alpha.shape}); "
                                 "show the slice again and repaint")
        painted = alpha if painted is None else painted | alpha
    return painted


def painted_mask(editor_value: dict[str, Any] | None, shape: tuple[int, int]) -> np.ndarray:
    """Pixels painted in any editor layer, as a mask of the (rows, cols) slice the editor showed."""
    painted = painted_canvas(editor_value)
    if painted is None:
        return np.zeros(shape, dtype=bool)
    return from_canvas(painted, place(shape))
