"""IRIS engine: in-context medical image segmentation (model, strategies, I/O, metrics)."""

__version__ = "0.1.0"
