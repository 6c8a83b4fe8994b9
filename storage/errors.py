"""Exceptions raised by the storage layer."""


class StorageError(RuntimeError):
    """A storage operation that cannot be done: unknown id, bad input, missing blob, ..."""


class NotFoundError(StorageError, LookupError):
    """No row with the requested id or name."""


class ArchiveError(StorageError):
    """A project archive that is malformed, unsafe or inconsistent; nothing was imported."""
