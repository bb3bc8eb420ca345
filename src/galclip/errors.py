"""User-facing error types. The CLI turns them into a message and a non-zero exit."""

from __future__ import annotations


class GalclipError(Exception):
    """An error the user can fix: the message names the file, the rows and the fix."""


class InputError(GalclipError):
    """Bad input data: wrong layout, shapes, values or duplicate targetids."""


class StoreError(GalclipError):
    """A feature store that is missing, incomplete or incompatible with the request."""


class DamagedDataError(GalclipError):
    """Data on disk that fails its checksum or does not decode: the message names the file (array, shard, rows)
    and the repair. The search service answers 503 with it, not 500."""


class CheckpointError(GalclipError):
    """A checkpoint whose layout or provenance does not match what is expected."""
