"""`InputLimits`: sanity bounds on inputs, checked before memory is allocated for what a file announces."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputLimits:
    """Bounds every reader and the segmenter apply to files from users.

    `max_classes`: distinct labels a support mask may carry (one channel per class is allocated later).
    `max_aspect_ratio`: longest over shortest side of a 2D image (the model sees it squeezed to a square).
    `max_zip_ratio`: how many times its own size a zip archive may inflate to (zip-bomb guard).
    """

    max_classes: int = 64
    max_aspect_ratio: float = 32.0
    max_zip_ratio: float = 100.0


DEFAULT_LIMITS = InputLimits()
