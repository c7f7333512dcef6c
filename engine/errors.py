"""Errors shown to the user as they are: bad input, a missing or tampered file, an untrained task."""


class TesseraError(Exception):
    """Base class: its message is complete and readable on its own."""


class BadInputError(TesseraError, ValueError):
    """The caller passed something unusable (empty prompt, wrong mask size, not an image...)."""


class BundleError(TesseraError):
    """A model bundle is incomplete, tampered with, or of an incompatible version."""


class UnsupportedTaskError(TesseraError):
    """The loaded model was not trained for the requested task."""
