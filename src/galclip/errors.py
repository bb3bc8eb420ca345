"""User-facing error types. The CLI turns them into a message and a non-zero exit."""

from __future__ import annotations


class GalclipError(Exception):
    """An error the user can fix: the message names the file, the rows and the fix."""


class InputError(GalclipError):
    """Bad input data: wrong layout, shapes, values or duplicate targetids."""


class StoreError(GalclipError):
    """A feature store that is missing, incomplete or incompatible with the request."""


class CheckpointError(GalclipError):
    """A checkpoint whose layout or provenance does not match what is expected."""
