"""Exceptions raised by the engine for bad user input (never a bare torch traceback)."""


class IrisInputError(ValueError):
    """Input that the engine cannot use: wrong shape, empty mask, NaN, unreadable file, ..."""


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, tampered with or incompatible with this code."""
