"""The editors' fixed square canvas: where a slice sits on it, and painted canvas pixels back to slice pixels.

Every editor image (background and mask layers) is exactly CANVAS x CANVAS px, the slice scaled to fit and centred.
Gradio's editor centres a layer that is smaller than what its canvas held before (a 300x400 mask on its 800x800
start-up canvas lands 250 px right, 200 px down), so nothing smaller than the canvas is ever sent to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iris_engine.errors import IrisInputError

CANVAS = 512  # px: side of the square editor canvas
LETTERBOX = (48, 52, 64)  # RGB around a slice that is not square: dark, and not black (black is image)


@dataclass(frozen=True)
class Placement:
    """A (rows, cols) slice scaled to (height, width) px at (top, left) on the size x size canvas."""

    rows: int
    cols: int
    size: int
    top: int
    left: int
    height: int
    width: int

    @property
    def scale(self) -> float:
        """Canvas px per slice px."""
        return self.height / self.rows

    def row_of(self) -> np.ndarray:
        """Slice row shown by each canvas row of the slice's area."""
        return np.minimum((np.arange(self.height) + 0.5) * self.rows / self.height, self.rows - 1).astype(int)

    def col_of(self) -> np.ndarray:
        return np.minimum((np.arange(self.width) + 0.5) * self.cols / self.width, self.cols - 1).astype(int)


def place(shape: tuple[int, int], size: int = CANVAS) -> Placement:
    """Where a slice of `shape` goes on the canvas: as large as fits, aspect kept, centred."""
    rows, cols = int(shape[0]), int(shape[1])
    if rows < 1 or cols < 1:
        raise IrisInputError(f"cannot show an empty slice ({rows}x{cols})")
    scale = size / max(rows, cols)
    height, width = max(1, round(rows * scale)), max(1, round(cols * scale))
    return Placement(rows, cols, size, (size - height) // 2, (size - width) // 2, height, width)


def to_canvas(image: np.ndarray, placement: Placement, fill: tuple[int, ...] | int = 0) -> np.ndarray:
    """A (rows, cols[, C]) slice image on the canvas (nearest neighbour), `fill` around it."""
    p = placement
    canvas = np.empty((p.size, p.size, *image.shape[2:]), dtype=image.dtype)
    canvas[...] = fill
    canvas[p.top: p.top + p.height, p.left: p.left + p.width] = image[p.row_of()[:, None], p.col_of()[None, :]]
    return canvas


def _check(drawing: np.ndarray, placement: Placement) -> np.ndarray:
    """The slice's area of a boolean canvas-sized drawing."""
    p = placement
    if drawing.shape != (p.size, p.size):
        raise IrisInputError(f"the editor returned a {drawing.shape[1]}x{drawing.shape[0]} px drawing, expected "
                             f"{p.size}x{p.size}: show the slice again and repaint")
    return drawing[p.top: p.top + p.height, p.left: p.left + p.width]


def _fraction(area: np.ndarray, placement: Placement) -> np.ndarray:
    """Per slice pixel, the fraction of the canvas pixels showing it that are True; a slice pixel no canvas pixel
    shows (a slice larger than the canvas) takes its nearest canvas pixel."""
    p = placement
    index = (p.row_of()[:, None] * p.cols + p.col_of()[None, :]).ravel()
    hits = np.bincount(index, weights=area.ravel().astype(float), minlength=p.rows * p.cols)
    shown = np.bincount(index, minlength=p.rows * p.cols)
    fraction = hits / np.maximum(shown, 1)
    unseen = np.flatnonzero(shown == 0)
    if unseen.size:
        rows, cols = np.divmod(unseen, p.cols)
        near_r = np.minimum(((rows + 0.5) * p.height / p.rows).astype(int), p.height - 1)
        near_c = np.minimum(((cols + 0.5) * p.width / p.cols).astype(int), p.width - 1)
        fraction[unseen] = area[near_r, near_c]
    return fraction.reshape(p.rows, p.cols)


def from_canvas(painted: np.ndarray, placement: Placement) -> np.ndarray:
    """Boolean canvas -> boolean slice: a slice pixel is painted when at least half of the canvas pixels showing it
    are; paint outside the slice's area is ignored."""
    return _fraction(_check(painted, placement), placement) >= 0.5


def touched(painted: np.ndarray, base: np.ndarray, placement: Placement) -> np.ndarray:
    """Slice pixels where the drawing differs from what the editor was given, on any canvas pixel showing them."""
    return _fraction(_check(painted, placement) != _check(base, placement), placement) > 0


def editor_options() -> dict[str, object]:
    """gr.ImageEditor keyword arguments every slice editor needs: the fixed canvas, lossless layers."""
    return {"canvas_size": (CANVAS, CANVAS), "fixed_canvas": True, "format": "png", "sources": (), "transforms": (),
            "layers": False, "type": "numpy"}
